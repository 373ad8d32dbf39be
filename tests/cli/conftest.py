"""Fixtures for tests through the real Pulumi CLI (``make pulumi``), against the reference
backend over real HTTP. A CLI that is not built skips here and fails in CI (``CI=true``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pulumi_leap0.client import Leap0Client
from pulumi_leap0.pulumi_cli import Stack, cli_dir, write_project
from tests.fixtures.backend import BackendServer
from tests.support import require

HEADER = "import pulumi\n\nimport pulumi_leap0 as leap0\n\n"
SANDBOX = "pulumi-python:dynamic/leap0:Sandbox"
NewStack = Callable[..., Stack]


@pytest.fixture(scope="session")
def pulumi_bin() -> Path:
    found = cli_dir()
    require(found is not None, "the Pulumi CLI is not built: run `make pulumi`")
    assert found is not None
    return found


def make_stacks(pulumi_bin: Path, backend: BackendServer, api_key: str,
                root: Path) -> tuple[NewStack, list[Stack]]:
    made: list[Stack] = []

    def new_stack(program: str, *, env: dict[str, str] | None = None,
                  base_url: str | None = None) -> Stack:
        index = len(made)
        stack = Stack(pulumi_bin, write_project(root / f"project-{index}", HEADER + program),
                      root / f"stack-{index}", env=env or {})
        stack.init(config={"leap0:baseUrl": base_url or backend.base_url},
                   secrets={"leap0:apiKey": api_key})
        made.append(stack)
        return stack

    return new_stack, made


def delete_all(backend: BackendServer, api_key: str) -> None:
    # Faster than `pulumi destroy` and independent of what a failed test left in state.
    with Leap0Client(api_key, backend.base_url) as leap0:
        for item in leap0.list_sandboxes(page_size=100).items:
            leap0.delete_sandbox(item.id)


@pytest.fixture
def new_stack(pulumi_bin: Path, backend: BackendServer, api_key: str,
              tmp_path: Path) -> Iterator[NewStack]:
    """``new_stack(program)``: a project whose program is ``program`` (after ``HEADER``), a
    stack of it on a file backend, configured for this test's organization."""
    make, _ = make_stacks(pulumi_bin, backend, api_key, tmp_path)
    yield make
    delete_all(backend, api_key)


def sandboxes(client: Leap0Client) -> list[str]:
    return sorted(item.id for item in client.list_sandboxes(page_size=100).items)


def steps(preview: dict[str, Any], type_: str = SANDBOX) -> list[dict[str, Any]]:
    """The steps of a ``preview --json`` for resources of ``type_``."""
    return [s for s in preview.get("steps", []) if s["urn"].split("::")[-2] == type_]
