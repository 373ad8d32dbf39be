"""Making a missing mount_path must never make the sandbox's root writable, even briefly.

The sandbox user owns its root tmpfs (it is read-only only through the mount flag), so a
``mount -o remount,rw /`` for the moment of a ``mkdir`` would let a process that keeps
trying write to ``/``. A writer loops inside while mounts are added at fresh paths.
"""

from __future__ import annotations

from pulumi_leap0.runner import Runner
from pulumi_leap0.runner.types import MountConfig
from tests.fixtures.s3 import S3
from tests.runner.conftest import Sandboxes

WRITER = ("i=0; while [ $i -lt 4000 ]; do "
          "(echo x > /pwned || mkdir /pwned-dir || mkdir -p /mnt/p0/pwned) 2>/dev/null; "
          "i=$((i+1)); done; echo done")


def test_adding_mounts_never_opens_the_root_for_writing(
    runner: Runner, sandboxes: Sandboxes, s3: S3
) -> None:
    sid = sandboxes.start()
    runner.exec(sid, f"nohup sh -c '{WRITER}' > /tmp/writer.log 2>&1 &")
    for n in range(8):
        runner.mounts.attach(sid, MountConfig(
            id=f"mnt-{n}", bucket=s3.bucket, mount_path=f"/mnt/p{n}/deeper/d{n}",
            endpoint=s3.endpoint, access_key_id=s3.access_key_id,
            secret_access_key=s3.secret_access_key))
    listing = runner.exec(sid, "ls -A / /mnt/p0").stdout
    assert "pwned" not in listing, listing
    assert runner.exec(sid, "ls /mnt/p7/deeper/d7").exit_code == 0
