"""Fixtures for mount tests: a real Runner (root, namespaces, FUSE, rclone) and sandboxes."""

from __future__ import annotations

import pytest

from pulumi_leap0.runner import Runner
from pulumi_leap0.runner.network import EgressSettings
from tests.fixtures.s3 import ALLOWED_CIDR
from tests.runner.conftest import require_capability, sandboxes  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    r = Runner(tmp_path_factory.mktemp("mounts") / "sandboxes",
               egress=EgressSettings(allow_mount_endpoints=(ALLOWED_CIDR,)))
    require_capability(r, "bubblewrap", "namespaces", "object_storage_mounts")
    return r

