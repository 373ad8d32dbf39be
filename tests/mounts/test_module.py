"""The mount module on its own, without the runner core: a bare mount namespace stands in
for a sandbox (``unshare --mount --propagation slave``, as bwrap makes its root rslave), with
a shared staging directory like the one the core binds in at /run/leap0/mounts."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pulumi_leap0.runner import mounts, rclone, sysutil
from pulumi_leap0.runner.errors import RunnerError
from pulumi_leap0.runner.network import EgressSettings
from pulumi_leap0.runner.types import MountConfig
from tests.fixtures.s3 import ALLOWED_CIDR, OBJECTS, S3
from tests.support import require


@dataclass
class Bare:
    handle: mounts.SandboxHandle
    root: Path
    process: subprocess.Popen[bytes]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the namespace (host binaries: the namespace shares the host root)."""
        return subprocess.run(["nsenter", "--target", str(self.handle.init_pid), "--mount",
                               "--", *argv], capture_output=True, text=True, timeout=60,
                              check=False)

    def mountinfo(self) -> str:
        return Path(f"/proc/{self.handle.init_pid}/mountinfo").read_text()


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Bare]:
    require(os.geteuid() == 0, "mount tests need root")
    require(mounts.AVAILABLE, "object-storage mounts need rclone, fusermount3 and /dev/fuse")
    require(shutil.which("unshare") is not None and shutil.which("nsenter") is not None,
            "util-linux unshare and nsenter are needed")
    staging = tmp_path / "mnt"
    staging.mkdir()
    # What the core's _make_staging does: a shared mount whose sub-mounts reach the sandbox.
    sysutil.mount(str(staging), staging, None, sysutil.MS_BIND)
    sysutil.mount("none", staging, None, sysutil.MS_SHARED)
    process = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", "--",
                                "sleep", "3600"])
    ns = f"/proc/{process.pid}/ns/mnt"
    deadline = time.monotonic() + 10
    while os.readlink(ns) == os.readlink("/proc/self/ns/mnt"):
        assert time.monotonic() < deadline, "unshare did not start"
        time.sleep(0.01)
    root = tmp_path / "box"
    root.mkdir()
    handle = mounts.SandboxHandle(
        sandbox_id="bare", init_pid=process.pid, state_dir=tmp_path / "state",
        staging_host=staging, staging_sandbox=str(staging), uid=0, gid=0,
        egress=EgressSettings(allow_mount_endpoints=(ALLOWED_CIDR,)))
    box = Bare(handle, root, process)
    try:
        yield box
    finally:
        mounts.detach_all(handle)
        process.send_signal(signal.SIGKILL)
        process.wait()
        sysutil.umount(staging)


def config(s3: S3, path: Path, mount_id: str = "mnt-a", prefix: str = "release/") -> MountConfig:
    return MountConfig(id=mount_id, bucket=s3.bucket, mount_path=str(path),
                       endpoint=s3.endpoint, prefix=prefix, access_key_id=s3.access_key_id,
                       secret_access_key=s3.secret_access_key)


def rclone_pids(staging: Path) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                argv = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"rclone") and any(str(staging).encode() in a for a in argv):
                found.append(int(entry.name))
    return found


def test_attach_binds_the_bucket_read_only_in_the_namespace_only(bare: Bare, s3: S3) -> None:
    target = bare.root / "data" / "models"
    mounts.attach(bare.handle, config(s3, target))

    read = bare.run("cat", str(target / "readme.txt"))
    assert read.stdout == OBJECTS["release/readme.txt"].decode(), read.stderr
    listing = bare.run("ls", "-R", str(target)).stdout
    assert "config.json" in listing and "secret-plan.txt" not in listing
    write = bare.run("sh", "-c", f"echo x > {target}/new.txt")
    assert "Read-only file system" in write.stderr
    line = next(ln for ln in bare.mountinfo().splitlines() if ln.split()[4] == str(target))
    assert line.split()[5].split(",")[0] == "ro" and "nosuid" in line and "nodev" in line
    assert "fuse.rclone" in line
    # The bind exists only inside: the host has the FUSE mount at staging, not at the path.
    assert not sysutil.is_mountpoint(target)
    assert sysutil.is_mountpoint(bare.handle.staging_host / "mnt-a")
    # The kernel reads ahead as far as the runner asked, on this mount alone (its own bdi).
    dev = os.stat(bare.handle.staging_host / "mnt-a").st_dev
    bdi = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    assert bdi.read_text().strip() == str(rclone.READ_AHEAD_KB)
    assert os.stat(bare.handle.staging_host).st_dev != dev
    # Neither the mount table (inside or out) nor the record holds a credential.
    record = (bare.handle.state_dir / "mounts" / "mnt-a.json").read_text()
    for text in (bare.mountinfo(), Path("/proc/self/mountinfo").read_text(), record):
        assert s3.secret_access_key not in text and s3.access_key_id not in text
    assert json.loads(record)["mount_path"] == str(target)

    mounts.detach(bare.handle, "mnt-a")
    assert str(target) not in bare.mountinfo()
    assert rclone_pids(bare.handle.staging_host) == []
    assert list(bare.handle.staging_host.iterdir()) == [bare.handle.staging_host / ".rw"]
    assert not (bare.handle.state_dir / "mounts" / "mnt-a.json").exists()


def test_attach_again_changes_the_mount_in_place(bare: Bare, s3: S3) -> None:
    first, second = bare.root / "one", bare.root / "two"
    mounts.attach(bare.handle, config(s3, first))
    mounts.attach(bare.handle, config(s3, second, prefix="staging/"))
    assert bare.run("ls", str(second)).stdout.split() == ["secret-plan.txt"]
    assert str(first) not in bare.mountinfo()
    assert len(rclone_pids(bare.handle.staging_host)) == 1
    assert [m.mount_path for m in mounts.list_mounts(bare.handle)] == [str(second)]


def test_a_bucket_that_cannot_be_listed_fails_with_a_reason_and_leaves_nothing(
    bare: Bare, s3: S3
) -> None:
    # (moto accepts any key, so a missing bucket stands in for a wrong one.)
    missing = dataclasses.replace(config(s3, bare.root / "x"), bucket="no-such-bucket")
    with pytest.raises(RunnerError, match="could not be listed") as failure:
        mounts.attach(bare.handle, missing)
    assert s3.secret_access_key not in str(failure.value)
    assert rclone_pids(bare.handle.staging_host) == []
    assert mounts.list_mounts(bare.handle) == []
    assert str(bare.root / "x") not in bare.mountinfo()


def test_reconcile_detaches_orphans_and_dead_mounts_and_names_what_to_reattach(
    bare: Bare, s3: S3
) -> None:
    for name in ("mnt-keep", "mnt-dead", "mnt-orphan"):
        mounts.attach(bare.handle, config(s3, bare.root / name, mount_id=name))
    assert all(m.serving for m in mounts.list_mounts(bare.handle))
    record = json.loads((bare.handle.state_dir / "mounts" / "mnt-dead.json").read_text())
    os.kill(record["pid"], signal.SIGKILL)  # rclone dies (say, the OOM killer)
    deadline = time.monotonic() + 5
    while any(m.serving for m in mounts.list_mounts(bare.handle) if m.id == "mnt-dead"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    serving = {m.id: m.serving for m in mounts.list_mounts(bare.handle)}
    assert serving == {"mnt-dead": False, "mnt-keep": True, "mnt-orphan": True}

    again = mounts.reconcile(bare.handle, ["mnt-keep", "mnt-dead", "mnt-missing"])
    assert again == ["mnt-dead", "mnt-missing"]
    assert [m.id for m in mounts.list_mounts(bare.handle)] == ["mnt-keep"]
    assert len(rclone_pids(bare.handle.staging_host)) == 1
    info = bare.mountinfo()
    assert str(bare.root / "mnt-orphan") not in info and str(bare.root / "mnt-dead") not in info
    assert "readme.txt" in bare.run("ls", str(bare.root / "mnt-keep")).stdout
    # The caller re-attaches what reconcile named, from its own copy of the configs.
    mounts.attach(bare.handle, config(s3, bare.root / "mnt-dead", mount_id="mnt-dead"))
    assert "readme.txt" in bare.run("ls", str(bare.root / "mnt-dead")).stdout


def test_a_gone_sandbox_is_cleaned_up_from_the_host_side(bare: Bare, s3: S3) -> None:
    mounts.attach(bare.handle, config(s3, bare.root / "m"))
    bare.process.kill()
    bare.process.wait()
    gone = dataclasses.replace(bare.handle, init_pid=0)
    assert [m.serving for m in mounts.list_mounts(gone)] == [False]
    mounts.detach_all(gone)
    assert rclone_pids(bare.handle.staging_host) == []
    assert mounts.list_mounts(gone) == []
    assert not sysutil.is_mountpoint(bare.handle.staging_host / "m")
