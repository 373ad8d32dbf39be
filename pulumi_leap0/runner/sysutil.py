"""Thin wrappers over Linux system calls the standard library does not expose.

They go through ctypes rather than spawning ``mount``/``umount`` because a sandbox start does
several of them and every spawned helper costs milliseconds of start latency.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import platform
from collections.abc import Iterator
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long
_libc.setfsuid.argtypes = [ctypes.c_uint]
_libc.setfsgid.argtypes = [ctypes.c_uint]

#: The environment of the host-side programs the runner starts: nothing of the backend's
#: (no proxies, no locale in output it parses), and the host's system directories as PATH.
HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REC = 0x4000
MS_BIND = 0x1000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 0x2

O_PATH = getattr(os, "O_PATH", 0o10000000)
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10

# openat2 has the same number on every architecture (it came after the syscall table
# unification); setgroups does not, and glibc's setgroups() changes every thread's groups,
# which is exactly what must not happen here, so it is called raw.
_SYS_OPENAT2 = 437
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159}.get(platform.machine())


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64),
                ("resolve", ctypes.c_uint64))


def _check(ret: int, what: str, path: str | os.PathLike[str] | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", None if path is None else str(path))
    return ret


def mount(source: str, target: Path, fstype: str | None, flags: int, data: str = "") -> None:
    _check(_libc.mount(source.encode(), str(target).encode(),
                       fstype.encode() if fstype else None, flags,
                       data.encode() if data else None), "mount", target)


def umount(target: Path, *, lazy: bool = True) -> None:
    """Unmount ``target``; already unmounted is fine."""
    ret = _libc.umount2(str(target).encode(), MNT_DETACH if lazy else 0)
    if ret < 0 and ctypes.get_errno() not in (errno.EINVAL, errno.ENOENT):
        _check(ret, "umount", target)


def mountpoints_under(prefix: Path) -> list[Path]:
    """Mount points at or below ``prefix`` in this mount namespace, deepest first."""
    found: list[Path] = []
    base = str(prefix).rstrip("/")
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            fields = line.split(" ")
            # mountinfo escapes blanks as \040; our paths never contain any.
            point = fields[4].replace("\\040", " ")
            if point == base or point.startswith(base + "/"):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def is_mountpoint(path: Path) -> bool:
    return path in mountpoints_under(path)


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    ret = _libc.syscall(_SYS_OPENAT2, dirfd, path.encode(), ctypes.byref(how),
                        ctypes.sizeof(how))
    return _check(int(ret), "openat2", path)


def openat2_supported() -> bool:
    try:
        fd = openat2(-100, "/", os.O_RDONLY | os.O_DIRECTORY, 0, RESOLVE_IN_ROOT)
    except OSError:
        return False
    os.close(fd)
    return True


@contextlib.contextmanager
def thread_fs_identity(uid: int, gid: int) -> Iterator[None]:
    """File access from this thread only, as ``uid``/``gid`` with no supplementary groups.

    The kernel keeps fsuid, fsgid and groups per thread; changing fsuid from 0 also drops the
    DAC-override capabilities of this thread. So a backend worker thread checks permissions
    the way the sandbox user would, and files it creates belong to that user, while every
    other thread keeps root. A no-op when not running as root.
    """
    if os.geteuid() != 0 or (uid == 0 and gid == 0):
        yield
        return
    old_groups = os.getgroups()
    if _SYS_SETGROUPS is not None:
        _check(int(_libc.syscall(_SYS_SETGROUPS, 0, None)), "setgroups")
    _libc.setfsgid(gid)
    _libc.setfsuid(uid)
    try:
        yield
    finally:
        _libc.setfsuid(0)
        _libc.setfsgid(0)
        if _SYS_SETGROUPS is not None:
            arr = (ctypes.c_uint * max(1, len(old_groups)))(*old_groups)
            _check(int(_libc.syscall(_SYS_SETGROUPS, len(old_groups), arr)), "setgroups")


def process_start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of ``pid``, or None if it is gone or a zombie.

    Together with the pid it names a process unambiguously across pid reuse.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rindex(b")") + 2 :].split()
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


def process_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(data[data.rindex(b")") + 2 :].split()[1])
