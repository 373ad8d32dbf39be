"""The glob matcher of ``filesearch``, without a sandbox: what it matches, and that no
pattern makes it backtrack."""

from __future__ import annotations

import time

import pytest

from pulumi_leap0.runner.filesearch import _glob_matcher


@pytest.mark.parametrize(("pattern", "rel", "expected"), [
    ("*.py", "main.py", True),
    ("*.py", "a/b/main.py", True),  # no "/": the name, at any depth
    ("*.py", "a/main.pyc", False),
    ("src/*.py", "src/a.py", True),
    ("src/*.py", "src/x/a.py", False),
    ("src/**/*.py", "src/a.py", True),  # "**" is zero or more directories
    ("src/**/*.py", "src/x/y/a.py", True),
    ("src/**/*.py", "lib/x/a.py", False),
    ("**/test_*.py", "tests/unit/test_a.py", True),
    ("**", "anything/at/all", True),
    ("a/**/b/**/c", "a/x/b/y/z/c", True),
    ("a/**/b/**/c", "a/x/y/z/c", False),
])
def test_what_a_glob_matches(pattern: str, rel: str, expected: bool) -> None:
    assert _glob_matcher(pattern)(rel) is expected


def test_no_pattern_backtracks() -> None:
    rel = "/".join(["a" * 30] * 200)
    for pattern in ["/".join(["**"] * 50 + ["*a*a*a*a*a*a*a*a*a*a*a*a*b"]),
                    "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b"]:
        matches = _glob_matcher(pattern)
        started = time.monotonic()
        assert not matches(rel)
        assert time.monotonic() - started < 1.0
