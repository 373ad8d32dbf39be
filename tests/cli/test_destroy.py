"""Done when 10: `pulumi destroy --yes` leaves nothing, in the API or on the host."""

from __future__ import annotations

import os
from types import SimpleNamespace

from pulumi_leap0.client import Leap0Client
from pulumi_leap0.runner.core import RUNTIME_BASE, short_hash
from tests.cli.conftest import SANDBOX, NewStack, sandboxes
from tests.fixtures.backend import BackendServer
from tests.fixtures.s3 import S3
from tests.runner.conftest import leftovers
from tests.support import require


def host_traces(backend: BackendServer, sandbox_id: str) -> list[str]:
    """What the backend's runner left of ``sandbox_id``: processes, cgroups, mounts, netns."""
    root = (backend.data_dir / "sandboxes").absolute()
    scope = short_hash(str(root))
    runner = SimpleNamespace(scope=scope, root_dir=root, runtime_dir=RUNTIME_BASE / scope)
    return leftovers(runner, sandbox_id)  # type: ignore[arg-type]


def test_destroy_leaves_no_sandbox_process_cgroup_mount_or_netns(
    new_stack: NewStack, client: Leap0Client, backend: BackendServer, s3: S3
) -> None:
    require(os.geteuid() == 0, "the reference backend runs sandboxes only as root")
    stack = new_stack(f'''
box = leap0.Sandbox("kept", template_name="system/debian:bookworm",
    mounts=[leap0.MountArgs(bucket="{s3.bucket}", mount_path="/models", endpoint="{s3.endpoint}",
                            access_key_id="{s3.access_key_id}",
                            secret_access_key="{s3.secret_access_key}")],
    network_policy=leap0.NetworkPolicyArgs(mode="custom", allow_domains=["example.com"]))
other = leap0.Sandbox("closed", template_name="system/debian:bookworm",
    network_policy=leap0.NetworkPolicyArgs(mode="deny-all"))
''')
    stack.up()
    ids = [r["id"] for r in stack.resources(SANDBOX)]
    assert sandboxes(client) == sorted(ids)
    # The check sees a live sandbox: its process, cgroup, FUSE mount and network namespace.
    live = host_traces(backend, ids[0])
    for kind in ("process", "cgroup", "mount", "netns"):
        assert any(t.startswith(kind) for t in live), (kind, live)

    stack.destroy()
    assert stack.resources(SANDBOX) == []
    assert sandboxes(client) == []
    for sandbox_id in ids:
        assert host_traces(backend, sandbox_id) == []
