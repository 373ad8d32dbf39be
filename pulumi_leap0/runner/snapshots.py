"""A sandbox's files as one archive: captured from its writable layer, seeded into a new one.

What is captured: the layer's ``home``, ``tmp`` and ``vartmp`` (``/home/<user>``, ``/tmp``,
``/var/tmp``), and for a sandbox of a container image the overlay's ``upper`` directory
(what it changed anywhere in ``/``, its home included); ``shm`` is shared memory, not files
anyone keeps. overlayfs records a deleted image file in ``upper`` as a 0/0 device (a
whiteout); the unpacker drops devices, so such a file is back after a restore.

The layer is the tenant's, and the tenant is hostile, so both directions are built so that
nothing in it can make the host act outside it:

* ``capture`` runs GNU ``tar --create`` as root over the frozen layer (``Snapshots.take``
  freezes the sandbox first, so nothing changes under it). Why tar: it is the well-kept
  tool for exactly this, and its defaults are the safe ones here: without ``-h`` it
  archives a symbolic link as a link and never follows it (a link to ``/etc/shadow`` or to
  another sandbox's files is stored as those few bytes of target), it opens what it reads
  with ``O_NOFOLLOW`` relative to the directory it walks, it stores FIFOs and device nodes
  as bare headers without opening them and skips sockets, and ``--one-file-system`` keeps it
  out of anything mounted below. Its output passes through this process, which counts it:
  past ``limit`` bytes, or past the deadline, tar is killed and the capture fails.
* ``seed`` unpacks with Python's ``tarfile`` in a process that joins the new sandbox's
  cgroups (its memory pays for its files, as it would for files it wrote) and becomes the
  sandbox's host uid before it reads a byte (``_UNPACK``): it can create nothing its owner
  could not. Why tarfile and not tar here: its extraction filters decide member by member.
  ``data_filter`` would refuse absolute symbolic links, which a sandbox makes all the time
  (a Python venv's ``bin/python -> /usr/bin/python3``), so links go through ``tar_filter``
  (no absolute or ``..`` names, nothing written through a link already extracted, no
  setuid/setgid/sticky bits, no group or other write bits), hard links through
  ``data_filter`` (their target must be inside), and FIFOs, devices and anything but
  regular files, directories and links are dropped. Only the three parts are written to:
  the layer's own top directory is root's, so the unpacker could not add to it anyway.

A snapshot bigger than the new sandbox's disk fails with ``SeedTooLarge`` (the tmpfs's
``size=`` answers ENOSPC): the caller destroys the half-made sandbox.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pulumi_leap0 import spec
from pulumi_leap0.runner import seccomp, sysutil
from pulumi_leap0.runner.cgroups import Cgroups
from pulumi_leap0.runner.errors import RunnerError
from pulumi_leap0.runner.identity import HostIdentity
from pulumi_leap0.runner.state import Records

#: The layer's parts a snapshot holds (``layer.PARTS`` less ``shm``).
CAPTURED_PARTS = ("home", "tmp", "vartmp")
#: The overlay's upper directory (``layer.make_root``), in the layer of an image's sandbox.
UPPER_PART = "upper"


def parts_of(layer: Path) -> tuple[str, ...]:
    """The parts of ``layer`` a snapshot holds: an image's sandbox has ``upper`` too."""
    return (*CAPTURED_PARTS, UPPER_PART) if (layer / UPPER_PART).is_dir() else CAPTURED_PARTS
#: What tar adds to the files' own bytes: a 512-byte header (and padding) per entry. Bounds
#: ``limit`` above the layer's size so a layer of many small files still fits.
HEADER_ALLOWANCE_BYTES = 64 * 1024 * 1024
_CHUNK = 1024 * 1024
#: ``_UNPACK``'s exit codes.
_EXIT_NO_SPACE, _EXIT_DAMAGED = 3, 2


class SeedTooLarge(RunnerError):
    """The snapshot's files do not fit in the new sandbox's disk."""


class Snapshots:
    """Snapshots of this runner's running sandboxes (``Runner.snapshots``). ``cgroup_of``
    names a sandbox's cgroup, ``lock_of`` its lifecycle lock (held while it is frozen)."""

    def __init__(self, records: Records, cgroups: Cgroups, cgroup_of: Callable[[str], str],
                 lock_of: Callable[[str], threading.Lock]) -> None:
        self._records, self._cgroups = records, cgroups
        self._cgroup_of, self._lock_of = cgroup_of, lock_of

    def take(self, sandbox_id: str, dest: Path, *, keep_frozen: bool = False,
             timeout: float = spec.SNAPSHOT_TIMEOUT_S) -> int:
        """The sandbox's writable layer as an archive at ``dest`` (``capture``), taken
        frozen so that it is one moment's files; returns the archive's size.

        A paused sandbox stays paused; a running one is thawed after, unless
        ``keep_frozen`` and the snapshot was made (it is about to be destroyed). The one
        place that knows where the writable files are: ``seed`` (``SandboxConfig.seed``)
        is its other half.
        """
        box = self._records.running(sandbox_id)
        rel = self._cgroup_of(box.id)
        with self._lock_of(box.id):
            was_frozen = self._cgroups.is_frozen(rel)
            if not was_frozen:
                self._cgroups.freeze_or_thaw(rel)
            try:
                writable = self._records.runtime(box.id) / "layer"
                limit = disk_bytes(writable) + HEADER_ALLOWANCE_BYTES
                size = capture(writable, dest, limit=limit, timeout=timeout)
            except BaseException:
                if not was_frozen:  # a failed snapshot leaves the sandbox as it found it
                    self._cgroups.thaw(rel)
                raise
            if not (was_frozen or keep_frozen):
                self._cgroups.thaw(rel)
            return size


def disk_bytes(writable: Path) -> int:
    """The layer's size limit (its tmpfs's size); a plain directory, without root, has
    none but the file system it is on."""
    fs = os.statvfs(writable)
    return fs.f_blocks * fs.f_frsize


def capture(layer: Path, dest: Path, *, limit: int, timeout: float) -> int:
    """``layer``'s parts as a tar archive at ``dest`` (made 0600, never over an existing
    file); returns its size. ``dest`` is removed again on any failure."""
    # Nice: a large capture yields the CPU to other organizations' sandboxes. Records of
    # 64 KiB (``--blocking-factor``), the pipe's size: one hop each instead of six.
    argv = ["nice", "-n", "10", "tar", "--create", "--file=-", "--format=gnu",
            "--blocking-factor=128",
            "--one-file-system", "--numeric-owner", "--sparse", "--no-acls", "--no-xattrs",
            "--no-selinux", f"--directory={layer}", "--", *parts_of(layer)]
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o600)
    try:
        size = _copy_from(argv, out, limit=limit, timeout=timeout)
        os.fsync(out)
    except BaseException:
        os.close(out)
        with contextlib.suppress(OSError):
            os.unlink(dest)
        raise
    os.close(out)
    return size


def _copy_from(argv: Sequence[str], out: int, *, limit: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=sysutil.HOST_ENV, cwd="/")
    assert proc.stdout is not None and proc.stderr is not None
    size = 0
    try:
        fd = proc.stdout.fileno()
        with contextlib.suppress(OSError):  # fewer, larger hops; the default still works
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _CHUNK)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RunnerError(f"the sandbox's files were not captured within {timeout:g} s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            # splice: the archive goes from tar's pipe to the file without passing through
            # this process's memory; only its size is counted here.
            moved = os.splice(fd, out, _CHUNK)
            if not moved:
                break
            size += moved
            if size > limit:
                raise RunnerError("the sandbox's files are larger than a snapshot may be")
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        errors = proc.stderr.read().decode(errors="replace").strip()
        proc.stdout.close()
        proc.stderr.close()
    if code != 0:
        # tar names the files it could not read: the tenant's names, not the host's.
        raise RunnerError(f"the sandbox's files could not be captured: {errors[-300:]}")
    return size


# Runs as root only until it has joined the cgroups and dropped to the sandbox's host uid;
# everything it imports is imported before that, from the interpreter's own library.
_UNPACK = r"""
import errno, os, sys, tarfile
dest, owner, parts, procs = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4:]
for path in procs:
    with open(path, "w") as fh:
        fh.write(str(os.getpid()))
uid, gid = (int(n) for n in owner.split(":"))
if os.geteuid() == 0:
    os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
os.umask(0o022)

def keep(member, path):
    top = member.name.split("/", 1)[0]
    if top not in parts or member.name == top:
        return None  # the parts themselves are the layer's, with the layer's modes
    if member.issym() or member.isreg() or member.isdir():
        return tarfile.tar_filter(member, path)
    if member.islnk():
        return tarfile.data_filter(member, path)
    return None  # FIFOs, devices: no sandbox needs them kept, and none may make them here

try:
    # MiB reads and copies: tarfile's defaults (10 KiB, 16 KiB) make it several times slower.
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|", bufsize=1 << 20,
                      copybufsize=1 << 20) as archive:
        archive.extractall(dest, filter=keep)
except OSError as exc:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        sys.exit(3)
    print(type(exc).__name__, exc.strerror, file=sys.stderr)
    sys.exit(1)
except (tarfile.TarError, ValueError) as exc:
    print(type(exc).__name__, file=sys.stderr)
    sys.exit(2)
"""


def seed(archive: Path, layer: Path, owner: HostIdentity, cgroup_procs: Sequence[Path], *,
         timeout: float, image: bool = False) -> None:
    """Unpack ``archive`` into a fresh ``layer`` as ``owner``, inside the new sandbox's
    cgroups (``cgroup_procs``), before its init starts and, for an ``image``'s sandbox,
    before its overlay is mounted (overlayfs must not see its upper directory change).

    The upper directory is the owner's while the unpacker fills it, then root's again (it
    is the sandbox's ``/``): what the image had as root's and the sandbox had changed comes
    back as the sandbox user's, in its own sandbox only."""
    parts: tuple[str, ...] = CAPTURED_PARTS
    upper = layer / UPPER_PART
    if image:
        parts = (*CAPTURED_PARTS, UPPER_PART)
        upper.mkdir(mode=0o755, exist_ok=True)
        os.chown(upper, owner.uid, owner.gid)
    try:
        _unpack(archive, layer, owner, cgroup_procs, parts, timeout=timeout)
    finally:
        if image:
            os.chown(upper, 0, 0)
            os.chmod(upper, 0o755)


def _unpack(archive: Path, layer: Path, owner: HostIdentity, cgroup_procs: Sequence[Path],
            parts: Sequence[str], *, timeout: float) -> None:
    with open(archive, "rb") as source:
        # Under the sandboxes' seccomp filter too: it handles what a tenant made.
        proc = seccomp.popen(
            [sys.executable, "-I", "-S", "-c", _UNPACK, str(layer),
             f"{owner.uid}:{owner.gid}", ",".join(parts), *map(str, cgroup_procs)],
            stdin=source, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=sysutil.HOST_ENV, cwd="/")
        try:
            _, errors = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RunnerError(f"the snapshot was not restored within {timeout:g} s") from None
    if proc.returncode == _EXIT_NO_SPACE:
        raise SeedTooLarge("the snapshot's files do not fit in the sandbox's disk")
    if proc.returncode == _EXIT_DAMAGED:
        raise RunnerError("the snapshot's archive is damaged")
    if proc.returncode != 0:
        raise RunnerError("the snapshot could not be restored: "
                          f"{errors.decode(errors='replace').strip()[-300:]}")
