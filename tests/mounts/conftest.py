"""Fixtures for mount tests: a real Runner (root, namespaces, FUSE, rclone) and sandboxes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pulumi_leap0.runner import Runner
from tests.runner.conftest import Sandboxes, require_capability


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    r = Runner(tmp_path_factory.mktemp("mounts") / "sandboxes")
    require_capability(r, "bubblewrap", "namespaces", "object_storage_mounts")
    return r


@pytest.fixture
def sandboxes(runner: Runner) -> Iterator[Sandboxes]:
    boxes = Sandboxes(runner)
    try:
        yield boxes
    finally:
        boxes.cleanup()
