"""Object-storage mounts: a bucket, read-only and lazy, at a path inside a running sandbox.

How a mount is made, and why:

1. ``rclone mount2`` (a pinned rclone built by ``make rclone``, a mature FUSE client for
   S3-compatible storage; its command lines in ``rclone.py``) runs on the host, outside the
   sandbox's PID namespace, with ``--read-only`` and ``--vfs-cache-mode off``: nothing is
   downloaded until it is read, and reads become ranged GETs. The credentials reach rclone
   only through its environment (an env-defined remote), never its arguments, a file or a
   mount option; the sandbox cannot see host processes, so it cannot read that environment
   either.
2. rclone mounts at ``staging_host/<mount id>``, a shared mount that the core binds into the
   sandbox at ``/run/leap0/mounts``, so the FUSE file system appears there inside.
3. A small helper (the host's Python, so no sandbox binaries are needed) enters the
   sandbox's mount namespace and root, creates ``mount_path`` if needed and bind-mounts
   ``/run/leap0/mounts/<id>`` there, read-only, nosuid, nodev. The sandbox root is a
   read-only tmpfs *owned by the sandbox user*, so a missing directory in it must not be
   made by remounting ``/`` read-write, even briefly: a process looping inside writes to
   ``/`` in that window, and a file it holds open makes the remount back to read-only fail
   (EBUSY), leaving the root writable for good (tests/mounts/test_root_stays_read_only.py).
   Instead the helper binds the root tmpfs non-recursively onto ``/run/leap0/mounts/.rw``
   (a 0700 host-root directory the sandbox user cannot traverse), makes only that private
   copy writable, creates the directories through it and unmounts it. Directories are made
   as the sandbox user (host root is unmapped in the sandbox's user namespace: EOVERFLOW).
   A path under a template directory that lacks it (``/usr/nope``) is refused: creating it
   would write into the template.

Why a host-side FUSE mount that propagates in, rather than rclone mounting straight into the
sandbox's mount namespace (``nsenter --mount rclone mount ...``): rclone would then live in
the sandbox's file system view for its whole life, resolving names with the sandbox's
/etc/resolv.conf and trusting its CA bundle, both of which the sandbox user can influence;
and the FUSE connection would exist only inside that namespace, so the host could neither
see whether it is alive nor unmount it once the sandbox is dead (its init pid may be reused).
Here the FUSE mount is the host's: ``list_mounts`` can check it, a dead sandbox's mounts are
cleaned up without entering anything, and only a plain read-only bind lives inside. Inside,
/proc/mounts shows ``fuse.rclone`` with the source ``LEAP0:<bucket>/<prefix>``: no secret.

What an endpoint may reach, and who may read a mount. rclone dials the endpoint from the
host, outside every network policy, so a tenant would point it at the host itself. Before
rclone runs, ``attach`` resolves the endpoint's host (with the egress resolver,
``EgressSettings.resolver``) and refuses it unless some address passes the egress filter's
address guard (``egress/resolve.py``: not loopback, link-local or metadata, this host, a
sandbox network), or lies in a CIDR the operator allowed (``allow_mount_endpoints``). Then:

- rclone only ever dials the addresses checked: it runs in a mount namespace of its own
  whose ``/etc/hosts`` maps the name to them and whose ``/etc/nsswitch.conf`` says
  ``hosts: files`` (the copy of ``/`` there is made private first, so neither bind
  reaches the host; the staging mount stays shared, so the FUSE mount does). A name that
  answers otherwise later (DNS rebinding) changes nothing until the next attach, which
  checks again (a restart's reconcile is an attach);
- rclone follows HTTP redirects, so where the checked addresses need no exception it runs
  with the group ``network.FENCED_GID``, and the host table refuses that group's packets
  to everything the guard refuses. A server the operator allowed is trusted not to
  redirect: its rclone is not fenced (it must reach what the guard refuses);
- the FUSE mount applies permissions (``--default-permissions``, ``--umask 077``, files
  owned by the sandbox's host uid) and the staging directory is host root's, 0710, group
  the sandbox's: no other user of the host lists or reads a bucket, and the sandbox sees
  its own files.

Endpoints with user-info are refused here too (``spec`` refuses them first), and no message
or log line of this module carries an endpoint.

A record per mount (``state_dir/mounts/<id>.json``: rclone's pid and start time, the
mount path, bucket and prefix; never a credential or the endpoint, which may carry userinfo)
lets ``detach`` and ``detach_all`` undo it all after a backend restart. rclone runs in its own
session, so it outlives the backend, as the sandbox does.

The API the core calls (``handle`` is a :class:`SandboxHandle` of a running sandbox; an
``init_pid`` of 0 means "gone": nothing is entered, only the host side is cleaned up):

- ``attach(handle, MountConfig)``: make the mount (or make it anew: an existing mount of the
  same id is detached first, so a changed bucket, prefix, credentials or path is an attach).
  Raises ``RunnerError`` with a reason (never a credential) and leaves nothing behind.
- ``detach(handle, mount_id)``: undo one mount; idempotent, also for unknown ids.
- ``detach_all(handle)``: undo every mount of the sandbox (stop, destroy, dead sandbox).
- ``list_mounts(handle) -> list[MountStatus]``: what the host side knows, with whether each
  mount is still served (its rclone alive, its FUSE mount connected).
- ``reconcile(handle, known_ids) -> list[str]``: after a restart, detach every mount that is
  not in ``known_ids`` and every dead one, and return the known ids that the caller must
  ``attach`` again (from its own copy of the configs: credentials are kept nowhere here).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pulumi_leap0.runner import network, rclone, sysutil
from pulumi_leap0.runner.egress.resolve import AddressGuard, lookup
from pulumi_leap0.runner.errors import RunnerError
from pulumi_leap0.runner.network import EgressSettings
from pulumi_leap0.runner.types import MountConfig

FUSERMOUNT = shutil.which("fusermount3") or shutil.which("fusermount")
# Root is needed to mount FUSE for another uid and to enter the sandbox's namespaces;
# nftables for the fence around rclone.
AVAILABLE = bool(os.geteuid() == 0 and rclone.BINARY and FUSERMOUNT
                 and Path("/dev/fuse").exists()
                 and shutil.which(network.NFT, path=sysutil.HOST_ENV["PATH"]))

MOUNT_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0

# rclone processes this runner started, so they can be reaped (not left as zombies).
_children: dict[int, subprocess.Popen[bytes]] = {}

_MOUNT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")  # it names files and dirs
_PRIVATE = ".rw"  # under staging: the helper's private, writable view of the root


@dataclass(frozen=True)
class SandboxHandle:
    sandbox_id: str
    init_pid: int
    state_dir: Path
    staging_host: Path
    staging_sandbox: str
    uid: int
    gid: int
    #: The resolver for endpoint names and the operator's exceptions to the address guard.
    egress: EgressSettings = field(default_factory=EgressSettings)


def _record_path(handle: SandboxHandle, mount_id: str) -> Path:
    return handle.state_dir / "mounts" / f"{mount_id}.json"


# Runs as `python -I -S -c _HELPER op init_pid staging mount_id path uid gid private`:
# a fresh single-threaded process, because setns() into a mount namespace is refused to a
# process sharing its fs state with other threads (the backend has many).
_HELPER = r"""
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 1, 2, 4, 32, 4096
def ok(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, what + ": " + os.strerror(e))
def mount(src, dst, flags):
    ok(libc.mount(src.encode(), dst.encode(), None, flags, None), "mount " + dst)
def umount(path):
    if libc.umount2(path.encode(), 2) != 0:
        if ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
            ok(-1, "umount " + path)
op, pid, staging, mid, path, uid, gid, PRIVATE = sys.argv[1:9]
root = os.open("/proc/%s/root" % pid, os.O_RDONLY | os.O_DIRECTORY)
ns = os.open("/proc/%s/ns/mnt" % pid, os.O_RDONLY)
ok(libc.setns(ns, 0x00020000), "setns")
os.fchdir(root)
os.chroot(".")
os.chdir("/")
def makedirs(p):
    # As the sandbox user: the root tmpfs belongs to the sandbox's user namespace, where
    # host root is not mapped (EOVERFLOW); the directories are the user's, as the root is.
    libc.setfsgid(int(gid))
    libc.setfsuid(int(uid))
    try:
        os.makedirs(p, 0o755, exist_ok=True)
    finally:
        libc.setfsuid(0)
        libc.setfsgid(0)
if op == "attach":
    if not os.path.isdir(path):
        try:
            makedirs(path)
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            private = staging + "/" + PRIVATE
            mount("/", private, MS_BIND)
            try:
                mount("none", private, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
                makedirs(private + path)
            finally:
                umount(private)
        if not os.path.isdir(path):
            sys.stderr.write("mount_path is under a read-only template directory\n")
            sys.exit(3)
    mount(staging + "/" + mid, path, MS_BIND)
    try:
        mount("none", path, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    except BaseException:
        umount(path)
        raise
elif op == "detach":
    # Only what attach bound there: the FUSE mount's device, or a dead FUSE mount (rclone
    # gone). Never, say, the writable layer's own mount at /tmp.
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            umount(path)
        elif exc.errno != errno.ENOENT:
            raise
    else:
        try:
            dev = os.stat(staging + "/" + mid).st_dev
        except OSError:
            dev = None
        if (dev is not None and dev != os.stat(staging).st_dev and st.st_dev == dev
                and os.path.ismount(path)):
            umount(path)
"""


def _in_sandbox(handle: SandboxHandle, op: str, mount_id: str, path: str) -> None:
    argv = [sys.executable, "-I", "-S", "-c", _HELPER, op, str(handle.init_pid),
            handle.staging_sandbox, mount_id, path, str(handle.uid), str(handle.gid),
            _PRIVATE]
    try:
        done = subprocess.run(argv, env={"PATH": rclone.HOST_PATH, "LC_ALL": "C"},
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                              check=False, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RunnerError(f"could not enter the sandbox to {op} the mount: {exc}") from exc
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise RunnerError(f"could not {op} the mount at {path}: "
                          f"{lines[-1][:300] if lines else done.returncode}")


def _check_path(path: str) -> None:
    # The backend validates too; the runner does not rely on it.
    parts = path.split("/")
    if (not path.startswith("/") or path.rstrip("/") == "" or ".." in parts or "\x00" in path
            or parts[1] in ("proc", "sys", "dev") or path.startswith("/run/leap0")):
        raise RunnerError("mount_path must be absolute, not '/', without '..', and outside "
                          "/proc, /sys, /dev and /run/leap0")


def attach(handle: SandboxHandle, config: MountConfig) -> None:
    if not AVAILABLE or rclone.BINARY is None:
        raise RunnerError("object-storage mounts need rclone (make rclone), fuse3, nftables "
                          "and /dev/fuse on the host")
    if not handle.init_pid:
        raise RunnerError("the sandbox is not running")
    if not _MOUNT_ID.match(config.id):
        raise RunnerError("mount ids are letters, digits, '_' and '-'")
    _check_path(config.mount_path)
    target = _target(config.endpoint, handle.egress)
    detach(handle, config.id)  # a changed mount is made anew under the same id
    network.install_host_rules()  # the fence, also on a host whose sandboxes are deny-all
    # Traversable by the sandbox's uid alone (the helper makes directories as it).
    os.chown(handle.staging_host, 0, handle.gid)
    os.chmod(handle.staging_host, 0o710)
    private = handle.staging_host / _PRIVATE
    private.mkdir(mode=0o700, exist_ok=True)
    os.chmod(private, 0o700)  # host root's: the sandbox user cannot traverse it
    record = _record_path(handle, config.id)
    record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        confine = rclone.confinement(target, record.with_suffix(".hosts"),
                                     record.with_suffix(".nsswitch"))
        _make(handle, config, confine, record)
    except BaseException:
        detach(handle, config.id)  # the pins too
        raise


def _make(handle: SandboxHandle, config: MountConfig, confine: list[str], record: Path) -> None:
    assert rclone.BINARY is not None
    _check_reachable(config, confine)
    host_dir = handle.staging_host / config.id
    host_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    log = (record.parent / f"{config.id}.log").open("ab")
    process = subprocess.Popen(
        [*confine, *rclone.mount_argv(rclone.BINARY, config, host_dir, handle.uid, handle.gid)],
        env=rclone.environment(config), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        start_new_session=True,  # outlives the backend, like the sandbox it serves
    )
    log.close()
    _children[process.pid] = process
    record.write_text(json.dumps({
        "pid": process.pid,
        "start_time": sysutil.process_start_time(process.pid),
        "mount_path": config.mount_path,
        "bucket": config.bucket,
        "prefix": config.prefix,
    }))
    _wait_mounted(process, host_dir)
    if rclone.READ_AHEAD_KB is not None:
        # The mount's own bdi, so no other file system reads ahead otherwise; a host whose
        # sysfs refuses it still mounts, only slower.
        dev = os.stat(host_dir).st_dev
        with contextlib.suppress(OSError):
            Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").write_text(
                str(rclone.READ_AHEAD_KB))
    _in_sandbox(handle, "attach", config.id, config.mount_path)


_REFUSED = ("the endpoint leads to an address mounts may not reach (loopback, link-local, "
            "this host, a sandbox network) unless the operator allows it")


def _target(endpoint: str, egress: EgressSettings) -> rclone.Target:
    """Resolve and check the endpoint's host now (module docstring)."""
    parts = urlsplit(endpoint)
    if "@" in parts.netloc or parts.scheme not in ("http", "https") or not parts.hostname:
        raise RunnerError("a mount endpoint must be an http or https URL without user-info")
    host = parts.hostname
    try:
        ipaddress.ip_address(host)
        name, found = None, [host]
    except ValueError:
        name, found = host, lookup(host, egress.resolver)
    if not found:
        raise RunnerError("the endpoint's host name does not resolve to an IPv4 address")
    guard = AddressGuard(network.FENCED_CIDRS, egress.allow_mount_endpoints)
    allowed = tuple(a for a in found if guard.allows(a))
    if not allowed:
        raise RunnerError(_REFUSED)
    return rclone.Target(name, allowed, all(guard.allows_unless_excepted(a) for a in allowed))


def _check_reachable(config: MountConfig, confine: list[str]) -> None:
    """Fail now, with a reason, rather than mount a bucket that will only ever be empty.

    ``rclone mount`` itself succeeds without reaching the endpoint (it is lazy), so a
    wrong endpoint, bucket or key would otherwise surface as an empty directory.
    """
    assert rclone.BINARY is not None
    try:
        done = subprocess.run(
            [*confine, *rclone.list_argv(rclone.BINARY, config)],
            env=rclone.environment(config), capture_output=True, text=True, timeout=MOUNT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RunnerError("the bucket's endpoint did not answer in time") from None
    if done.returncode != 0:
        raise RunnerError(
            f"the bucket {config.bucket!r} could not be listed: check the endpoint, bucket, "
            "prefix and credentials"
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
    if not _MOUNT_ID.match(mount_id):
        return  # never attached: attach refuses such ids
    record_path = _record_path(handle, mount_id)
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    if record.get("mount_path") and handle.init_pid:  # 0: the sandbox is gone
        # Fails harmlessly when the sandbox is gone or the bind was never made.
        with contextlib.suppress(RunnerError):
            _in_sandbox(handle, "detach", mount_id, str(record["mount_path"]))
    host_dir = handle.staging_host / mount_id
    if sysutil.is_mountpoint(host_dir):
        with contextlib.suppress(OSError):
            sysutil.umount(host_dir, lazy=True)
    if record.get("pid"):
        _stop_rclone(int(record["pid"]), record.get("start_time"))
    with contextlib.suppress(OSError):
        host_dir.rmdir()
    for leftover in (record_path, *(record_path.with_suffix(x)
                                     for x in (".log", ".hosts", ".nsswitch"))):
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
        ids |= {p.name for p in handle.staging_host.iterdir() if p.name != _PRIVATE}
    for mount_id in sorted(ids):
        detach(handle, mount_id)
    with contextlib.suppress(OSError):
        (handle.staging_host / _PRIVATE).rmdir()


@dataclass(frozen=True)
class MountStatus:
    """One mount as the host side sees it (no credentials: they are kept nowhere here)."""

    id: str
    mount_path: str
    bucket: str
    prefix: str
    #: rclone is running and its FUSE mount answers: the sandbox can read the bucket.
    serving: bool


def _serving(handle: SandboxHandle, record: dict[str, object]) -> bool:
    pid, start = record.get("pid"), record.get("start_time")
    if not isinstance(pid, int) or sysutil.process_start_time(pid) != start:
        return False
    host_dir = handle.staging_host / str(record.get("id", ""))
    try:
        os.stat(host_dir)  # a FUSE mount whose server died answers ENOTCONN
    except OSError:
        return False
    return sysutil.is_mountpoint(host_dir)


def list_mounts(handle: SandboxHandle) -> list[MountStatus]:
    """Every mount this sandbox has a record of, from the host side, sorted by id."""
    records = handle.state_dir / "mounts"
    found = []
    for path in sorted(records.glob("*.json")) if records.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = {}
        if not isinstance(record, dict):
            record = {}
        record["id"] = path.stem
        found.append(MountStatus(
            id=path.stem, mount_path=str(record.get("mount_path", "")),
            bucket=str(record.get("bucket", "")), prefix=str(record.get("prefix", "")),
            serving=bool(handle.init_pid) and _serving(handle, record),
        ))
    return found


def reconcile(handle: SandboxHandle, known_ids: Iterable[str]) -> list[str]:
    """Bring the host side in line with the mounts the caller knows, after a restart.

    Mounts not in ``known_ids`` are detached (orphans of a call that crashed half-way, or of
    a mount deleted while the backend was down), and so are dead ones (rclone gone, e.g.
    killed by the OOM killer). Returns, sorted, the known ids that are not served now: the
    caller attaches them again with their configs. Leftover staging directories without a
    record are removed too.
    """
    known = set(known_ids)
    statuses = {m.id: m for m in list_mounts(handle)}
    for mount_id, status in statuses.items():
        if mount_id not in known or not status.serving:
            detach(handle, mount_id)
    if handle.staging_host.is_dir():
        for leftover in handle.staging_host.iterdir():
            if leftover.name != _PRIVATE and leftover.name not in statuses:
                detach(handle, leftover.name)
    return sorted(i for i in known if not (i in statuses and statuses[i].serving))
