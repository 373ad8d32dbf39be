"""Helpers every test module may use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI") == "true"
REPO_ROOT = Path(__file__).resolve().parent.parent


def require(condition: bool, reason: str) -> None:
    """Skip where a capability is missing, except in CI, where every capability must exist.

    CI runs as root on a machine with bubblewrap, cgroups, FUSE and network namespaces;
    a test that quietly skips there would count a missing guarantee as a pass.
    """
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this, but it is missing: {reason}")
    pytest.skip(reason)


def shared_data_dir() -> Path:
    """Leap0's OpenAPI document and Pulumi's metaschema: published by others, not copied here."""
    configured = os.environ.get("LEAP0_SHARED_DATA")
    candidates = [Path(configured)] if configured else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for candidate in candidates:
        if (candidate / "leap0-openapi.yaml").exists():
            return candidate
    require(False, "shared data not found: set LEAP0_SHARED_DATA to a folder with "
            "leap0-openapi.yaml and pulumi-package-metaschema.json")
    raise AssertionError("unreachable")
