"""Object-storage mounts: a bucket, read-only and lazy, at a path inside a running sandbox.

How a mount is made, and why:

1. ``rclone mount`` (Debian's rclone, a mature FUSE client for S3-compatible storage) runs
   on the host, outside the sandbox's PID namespace, with ``--read-only`` and
   ``--vfs-cache-mode off``: nothing is downloaded until it is read, and reads become
   ranged GETs. The credentials reach rclone only through its environment (an env-defined
   remote), never its arguments, a file or a mount option; the sandbox cannot see host
   processes, so it cannot read that environment either.
2. rclone mounts at ``staging_host/<mount id>``, a shared mount that the core binds into the
   sandbox at ``/run/leap0/mounts``, so the FUSE file system appears there inside.
3. From the sandbox's own mount namespace (``nsenter``), that directory is bind-mounted at
   ``mount_path``. The sandbox's root is read-only; where ``mount_path`` does not exist it
   is created as the sandbox's user, with the root made writable for the moment the
   ``mkdir`` takes (a few milliseconds, during which the sandbox could write to its own
   root file system and nothing more).

A record per mount (``state_dir/mounts/<id>.json``: rclone's pid and start time, the
mount path) lets ``detach`` and ``detach_all`` undo it all after a backend restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pulumi_leap0.runner import sysutil
from pulumi_leap0.runner.errors import RunnerError
from pulumi_leap0.runner.types import MountConfig

RCLONE = shutil.which("rclone")
FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount")
AVAILABLE = bool(RCLONE and FUSERMOUNT and Path("/dev/fuse").exists())

MOUNT_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0
_REMOTE = "LEAP0"  # the name of rclone's env-defined remote

# rclone processes this runner started, so they can be reaped (not left as zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}

# Runs inside the sandbox's mount namespace: $1 mount path, $2 source, $3 uid, $4 gid.
_BIND_SCRIPT = r"""
if [ ! -d "$1" ]; then
    if ! setpriv --reuid="$3" --regid="$4" --clear-groups mkdir -p "$1" 2>/dev/null; then
        mount -o remount,rw / || exit 1
        setpriv --reuid="$3" --regid="$4" --clear-groups mkdir -p "$1"; made=$?
        mount -o remount,ro / || exit 1
        [ "$made" = 0 ] || exit 1
    fi
fi
exec mount --bind "$2" "$1"
"""


@dataclass(frozen=True)
class SandboxHandle:
    sandbox_id: str
    init_pid: int
    state_dir: Path
    staging_host: Path
    staging_sandbox: str
    uid: int
    gid: int


def _record_path(handle: SandboxHandle, mount_id: str) -> Path:
    return handle.state_dir / "mounts" / f"{mount_id}.json"


def _rclone_env(config: MountConfig) -> dict[str, str]:
    # A clean environment: inherited AWS_* or proxy variables would change what rclone does.
    prefix = f"RCLONE_CONFIG_{_REMOTE}_"
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/nonexistent",
        prefix + "TYPE": "s3",
        prefix + "PROVIDER": "Other",
        prefix + "ENDPOINT": config.endpoint,
        prefix + "ENV_AUTH": "false",
    }
    if config.access_key_id and config.secret_access_key:
        env[prefix + "ACCESS_KEY_ID"] = config.access_key_id
        env[prefix + "SECRET_ACCESS_KEY"] = config.secret_access_key
    return env


def _nsenter(handle: SandboxHandle, *command: str) -> subprocess.CompletedProcess[str]:
    # --pid as well: mount(8) reads /proc/self, which exists only in the sandbox's procfs for
    # processes of its PID namespace.
    return subprocess.run(
        ["nsenter", f"--target={handle.init_pid}", "--mount", "--pid", "--", *command],
        capture_output=True, text=True, timeout=MOUNT_TIMEOUT_S, check=False,
    )


def attach(handle: SandboxHandle, config: MountConfig) -> None:
    if not AVAILABLE or RCLONE is None:
        raise RunnerError("object-storage mounts need rclone, fuse3 and /dev/fuse on the host")
    detach(handle, config.id)  # a changed mount is made anew under the same id
    _check_reachable(config)
    host_dir = handle.staging_host / config.id
    host_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    record = _record_path(handle, config.id)
    record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = (record.parent / f"{config.id}.log").open("ab")
    remote = f"{_REMOTE}:{config.bucket}/{config.prefix}"
    process = subprocess.Popen(
        [RCLONE, "mount", "--config", "/dev/null", remote, str(host_dir),
         "--read-only", "--allow-other", "--vfs-cache-mode", "off",
         "--dir-cache-time", "5s", "--poll-interval", "0",
         "--buffer-size", "64M", "--vfs-read-chunk-size", "64M"],
        env=_rclone_env(config), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        start_new_session=True,  # outlives the backend, like the sandbox it serves
    )
    log.close()
    _children[process.pid] = process
    record.write_text(json.dumps({
        "pid": process.pid,
        "start_time": sysutil.process_start_time(process.pid),
        "mount_path": config.mount_path,
    }))
    try:
        _wait_mounted(process, host_dir)
        inside = f"{handle.staging_sandbox}/{config.id}"
        done = _nsenter(handle, "sh", "-c", _BIND_SCRIPT, "sh", config.mount_path, inside,
                        str(handle.uid), str(handle.gid))
        if done.returncode != 0:
            raise RunnerError(
                f"could not mount at {config.mount_path}: {done.stderr.strip()[:300]}"
            )
    except BaseException:
        detach(handle, config.id)
        raise


def _check_reachable(config: MountConfig) -> None:
    """Fail now, with a reason, rather than mount a bucket that will only ever be empty.

    ``rclone mount`` itself succeeds without reaching the endpoint (it is lazy), so a
    wrong endpoint, bucket or key would otherwise surface as an empty directory.
    """
    assert RCLONE is not None
    remote = f"{_REMOTE}:{config.bucket}/{config.prefix}"
    try:
        done = subprocess.run(
            [RCLONE, "lsf", "--config", "/dev/null", "--max-depth", "1", "--contimeout", "5s",
             "--timeout", "10s", "--retries", "1", "--low-level-retries", "1", remote],
            env=_rclone_env(config), capture_output=True, text=True, timeout=MOUNT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RunnerError(f"the bucket at {config.endpoint} did not answer in time") from None
    if done.returncode != 0:
        raise RunnerError(
            f"the bucket {config.bucket!r} at {config.endpoint} could not be listed: check "
            "the endpoint, bucket, prefix and credentials"
        )


def _wait_mounted(process: subprocess.Popen[bytes], host_dir: Path) -> None:
    deadline = time.monotonic() + MOUNT_TIMEOUT_S
    while not sysutil.is_mountpoint(host_dir):
        if process.poll() is not None:
            raise RunnerError(
                "the bucket could not be mounted (rclone exited): check the endpoint, "
                "bucket, prefix and credentials"
            )
        if time.monotonic() > deadline:
            raise RunnerError(f"the bucket was not mounted within {MOUNT_TIMEOUT_S:g} s")
        time.sleep(0.02)


def detach(handle: SandboxHandle, mount_id: str) -> None:
    record_path = _record_path(handle, mount_id)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    if record.get("mount_path") and handle.init_pid:  # 0: the sandbox is gone
        # Fails harmlessly when the sandbox is gone or the bind was never made.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _nsenter(handle, "umount", "-l", str(record["mount_path"]))
    host_dir = handle.staging_host / mount_id
    if sysutil.is_mountpoint(host_dir):
        with contextlib.suppress(OSError):
            sysutil.umount(host_dir, lazy=True)
    if record.get("pid"):
        _stop_rclone(int(record["pid"]), record.get("start_time"))
    with contextlib.suppress(OSError):
        host_dir.rmdir()
    for leftover in (record_path, record_path.with_suffix(".log")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def _stop_rclone(pid: int, start_time: int | None) -> None:
    child = _children.pop(pid, None)
    # A pid alone may have been reused since: the start time tells our rclone apart.
    if child is None and sysutil.process_start_time(pid) != start_time:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if child is not None:
                if child.poll() is not None:
                    return
            elif sysutil.process_start_time(pid) != start_time:
                return
            time.sleep(0.02)


def detach_all(handle: SandboxHandle) -> None:
    records = handle.state_dir / "mounts"
    ids = {p.stem for p in records.glob("*.json")} if records.is_dir() else set()
    if handle.staging_host.is_dir():
        ids |= {p.name for p in handle.staging_host.iterdir()}
    for mount_id in sorted(ids):
        detach(handle, mount_id)
