"""Fixtures for mount tests: a real Runner (root, namespaces, FUSE, rclone) and sandboxes."""

from __future__ import annotations

import pytest

from pulumi_leap0.runner import Runner
from tests.runner.conftest import require_capability, sandboxes  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    r = Runner(tmp_path_factory.mktemp("mounts") / "sandboxes")
    require_capability(r, "bubblewrap", "namespaces", "object_storage_mounts")
    return r

