"""Mounts across runner restarts and dead sandboxes, refused paths, and the host side's
secrecy: what tests/runner/test_mounts.py does not cover."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pulumi_leap0.runner import Runner
from pulumi_leap0.runner.errors import RunnerError
from pulumi_leap0.runner.types import MountConfig
from tests.fixtures.s3 import S3
from tests.runner.conftest import Sandboxes, leftovers


def _mount(s3: S3, mount_id: str = "mnt-a", path: str = "/mnt/models",
           prefix: str = "release/") -> MountConfig:
    return MountConfig(id=mount_id, bucket=s3.bucket, mount_path=path, endpoint=s3.endpoint,
                       prefix=prefix, access_key_id=s3.access_key_id,
                       secret_access_key=s3.secret_access_key)


def _rclone_pids(runner: Runner, sandbox_id: str) -> list[int]:
    """rclone processes serving this sandbox (by their mount point argument), so that
    other tests' rclone processes running at the same time do not count."""
    marker = str(runner.runtime_dir / sandbox_id).encode()
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                argv = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            if argv.split(b"\0")[0].endswith(b"rclone") and marker in argv:
                found.append(int(entry.name))
    return found


def _read(runner: Runner, sandbox_id: str, path: str) -> str:
    result = runner.exec(sandbox_id, f"cat {path}", timeout=60)
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_a_new_runner_keeps_live_mounts_and_recover_cleans_orphans(
    runner: Runner, sandboxes: Sandboxes, s3: S3
) -> None:
    kept = sandboxes.start(mounts=[_mount(s3)])
    orphan = sandboxes.start(mounts=[_mount(s3)])
    # A backend restart: a new Runner over the same state, told which sandboxes it knows.
    again = Runner(runner.root_dir, egress=runner.egress)
    assert again.recover([kept]) == {kept}
    assert _rclone_pids(again, orphan) == [] and leftovers(again, orphan) == []
    assert _read(again, kept, "/mnt/models/readme.txt").startswith("weights")
    again.destroy(kept)
    assert _rclone_pids(again, kept) == [] and leftovers(again, kept) == []


def test_a_dead_sandbox_does_not_leave_rclone_running(
    runner: Runner, sandboxes: Sandboxes, s3: S3
) -> None:
    sid = sandboxes.start(mounts=[_mount(s3)])
    box = runner._records.get(sid)
    assert box is not None
    os.kill(box.init_pid, 9)  # the sandbox dies under the runner
    deadline = time.monotonic() + 5
    while runner.is_alive(sid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_rclone_pids(runner, sid)) == 1
    runner.destroy(sid)
    assert _rclone_pids(runner, sid) == [] and leftovers(runner, sid) == []


def test_stop_and_start_again_remount(runner: Runner, sandboxes: Sandboxes, s3: S3) -> None:
    from pulumi_leap0.runner import SandboxConfig
    from tests.runner.conftest import TEMPLATE

    sid = sandboxes.start(mounts=[_mount(s3)])
    runner.stop(sid)
    assert _rclone_pids(runner, sid) == []
    assert [p.name for p in (runner.runtime_dir / sid / "mnt").iterdir()] == []
    runner.start(SandboxConfig(id=sid, template=TEMPLATE, mounts=[_mount(s3)]))
    assert _read(runner, sid, "/mnt/models/readme.txt").startswith("weights")


def test_paths_that_would_write_into_the_template_or_escape_are_refused(
    runner: Runner, sandboxes: Sandboxes, s3: S3
) -> None:
    sid = sandboxes.start()
    with pytest.raises(RunnerError, match="read-only template"):
        runner.mounts.attach(sid, _mount(s3, path="/usr/share/leap0-nope"))
    assert not Path("/usr/share/leap0-nope").exists()
    for bad in ("/proc/x", "/run/leap0/mounts/x", "relative", "/a/../b", "/"):
        with pytest.raises(RunnerError):
            runner.mounts.attach(sid, _mount(s3, path=bad))
    assert _rclone_pids(runner, sid) == []


def test_no_host_side_command_line_mount_entry_or_file_holds_the_credentials(
    runner: Runner, sandboxes: Sandboxes, s3: S3
) -> None:
    sid = sandboxes.start(mounts=[_mount(s3)])
    secrets = (s3.secret_access_key, s3.access_key_id)
    pids = _rclone_pids(runner, sid)
    assert pids
    for pid in pids:
        assert not any(s in Path(f"/proc/{pid}/cmdline").read_text() for s in secrets)
        # ...while its environment does hold them: that is where they are meant to be.
        assert s3.secret_access_key in Path(f"/proc/{pid}/environ").read_text()
    assert not any(s in Path("/proc/self/mountinfo").read_text() for s in secrets)
    for base in (runner.root_dir / sid, runner.runtime_dir / sid):
        for path in base.rglob("*"):
            if path.is_file() and "/mnt/" not in str(path):
                data = path.read_bytes()
                assert not any(s.encode() in data for s in secrets), path
