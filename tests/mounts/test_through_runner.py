"""Object-storage mounts in a running sandbox: readable, read-only, lazy, credentials unseen."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from pulumi_leap0.runner import MountConfig, Runner
from tests.fixtures.s3 import (
    BUCKET,
    LARGE_SIZE,
    OBJECTS,
    S3,
    CountingProxy,
    large_object,
)
from tests.runner.conftest import Sandboxes, leftovers, require_capability


@pytest.fixture
def mounting(runner: Runner) -> Runner:
    require_capability(runner, "fuse", "object_storage_mounts")
    return runner


def mount(s3: S3, mount_id: str = "mnt-1", path: str = "/models", prefix: str = "release/",
          endpoint: str | None = None) -> MountConfig:
    return MountConfig(id=mount_id, bucket=BUCKET, mount_path=path,
                       endpoint=endpoint or s3.endpoint, prefix=prefix,
                       access_key_id=s3.access_key_id, secret_access_key=s3.secret_access_key)


def sh(runner: Runner, sandbox_id: str, command: str) -> str:
    result = runner.exec(sandbox_id, command, timeout=60)
    assert result.exit_code == 0, result.stderr
    return result.stdout


@pytest.fixture
def proxy(s3: S3) -> Iterator[CountingProxy]:
    relay = CountingProxy(urlsplit(s3.endpoint).port or 80)
    yield relay
    relay.close()


def test_objects_under_the_prefix_are_readable_and_nothing_else(
    mounting: Runner, sandboxes: Sandboxes, s3: S3
) -> None:
    box = sandboxes.start(mounts=(mount(s3),))
    assert sh(mounting, box, "cat /models/readme.txt") == OBJECTS["release/readme.txt"].decode()
    assert sh(mounting, box, "cat /models/v1/config.json") == '{"layers": 2}\n'
    listing = sh(mounting, box, "ls -R /models")
    assert "secret-plan.txt" not in listing and "staging" not in listing


def test_writes_are_refused(mounting: Runner, sandboxes: Sandboxes, s3: S3) -> None:
    box = sandboxes.start(mounts=(mount(s3),))
    for attempt in ("echo x > /models/new.txt", "rm /models/readme.txt",
                    "mkdir /models/dir", "echo x >> /models/readme.txt"):
        result = mounting.exec(box, attempt)
        assert result.exit_code != 0, attempt
        assert "Read-only file system" in result.stderr, result.stderr
    assert set(s3.client().list_objects_v2(Bucket=BUCKET)["KeyCount"] for _ in [0]) == {
        len(OBJECTS) + 1
    }


def search(secret: str, where: str) -> str:
    """Shell code that greps ``where`` for ``secret`` without the secret ever being in a
    command line (the probe reads every process's command line too): it is assembled from
    two halves and handed to grep through a here-document."""
    half = len(secret) // 2
    return (f"a='{secret[:half]}'; b='{secret[half:]}'; {where} | grep -F -f /dev/fd/3 3<<EOF\n"
            "$a$b\nEOF\n")


def test_credentials_are_nowhere_inside(mounting: Runner, sandboxes: Sandboxes, s3: S3) -> None:
    box = sandboxes.start(mounts=(mount(s3),))
    proc = ("for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline /proc/mounts "
            "/proc/self/mountinfo; do cat $f 2>/dev/null; echo; done | tr '\\0' '\\n'")
    files = ("timeout 30 grep -rIl '' / --exclude-dir=proc --exclude-dir=sys "
             "--exclude-dir=models --exclude-dir=usr 2>/dev/null | xargs -r cat 2>/dev/null")
    for secret in (s3.secret_access_key, s3.access_key_id):
        for where in (proc, files):
            found = mounting.exec(box, search(secret, where), timeout=60)
            assert found.stdout == "", where
    # The probe finds what it looks for: a planted copy shows up.
    planted = mounting.exec(box, search(s3.secret_access_key, f"echo x{s3.secret_access_key}"))
    assert planted.stdout.strip() == f"x{s3.secret_access_key}"
    processes = sh(mounting, box, "ps -eo args")
    assert "rclone" not in processes
    # The credentials did reach rclone, on the host side: the mount would be empty otherwise.
    assert "readme.txt" in sh(mounting, box, "ls /models")


def test_a_first_read_of_a_large_object_does_not_fetch_it_whole(
    mounting: Runner, sandboxes: Sandboxes, s3: S3, proxy: CountingProxy
) -> None:
    box = sandboxes.start(mounts=(mount(s3, endpoint=f"http://127.0.0.1:{proxy.port}"),))
    head = mounting.exec(box, "head -c 1048576 /models/large.bin | md5sum", timeout=60)
    assert head.exit_code == 0, head.stderr
    assert head.stdout.split()[0] == hashlib.md5(large_object()[: 1 << 20]).hexdigest()
    assert proxy.bytes_from_server < LARGE_SIZE // 2, proxy.bytes_from_server
    size = sh(mounting, box, "stat -c %s /models/large.bin").strip()
    assert int(size) == LARGE_SIZE


def test_mounts_are_added_changed_and_removed_live(
    mounting: Runner, sandboxes: Sandboxes, s3: S3
) -> None:
    box = sandboxes.start()
    mounting.mounts.attach(box, mount(s3, path="/data/models"))
    assert "readme.txt" in sh(mounting, box, "ls /data/models")

    mounting.mounts.attach(box, mount(s3, path="/data/models", prefix="staging/"))  # changed
    assert sh(mounting, box, "ls /data/models").split() == ["secret-plan.txt"]

    mounting.mounts.attach(box, mount(s3, mount_id="mnt-2", path="/home/user/more"))
    mounting.mounts.detach(box, "mnt-1")
    assert mounting.exec(box, "ls /data/models/secret-plan.txt").exit_code != 0
    assert "readme.txt" in sh(mounting, box, "ls /home/user/more")
    assert "rclone" not in sh(mounting, box, "ps -eo args")


def test_mounts_survive_freeze_and_thaw(mounting: Runner, sandboxes: Sandboxes, s3: S3) -> None:
    box = sandboxes.start(mounts=(mount(s3),))
    mounting.freeze(box)
    mounting.thaw(box)
    assert sh(mounting, box, "cat /models/readme.txt") == OBJECTS["release/readme.txt"].decode()


def test_a_bad_endpoint_fails_the_start_and_leaves_nothing(
    mounting: Runner, sandboxes: Sandboxes, s3: S3
) -> None:
    from pulumi_leap0.runner import RunnerError

    bad = mount(s3, endpoint="http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(RunnerError):
        sandboxes.start(mounts=(bad,))
    assert leftovers(mounting, sandboxes.ids[-1]) == []
    assert rclone_processes(mounting) == []


def test_destroy_leaves_no_rclone_mount_or_folder(
    mounting: Runner, sandboxes: Sandboxes, s3: S3
) -> None:
    box = sandboxes.start(mounts=(mount(s3), mount(s3, mount_id="mnt-2", path="/more")))
    assert len(rclone_processes(mounting)) >= 2
    mounting.destroy(box)
    assert leftovers(mounting, box) == []
    assert rclone_processes(mounting) == []
    with open("/proc/self/mountinfo") as mountinfo:
        assert [line for line in mountinfo if "fuse.rclone" in line
                and str(mounting.runtime_dir) in line] == []


def rclone_processes(runner: Runner) -> list[str]:
    """The live rclone processes of ``runner``'s sandboxes (their mount points are under its
    runtime dir), not those of other runs on a shared machine."""
    found = subprocess.run(["pgrep", "-a", "-x", "rclone"], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines()
            if "<defunct>" not in line and str(runner.runtime_dir) in line]
