"""Thin wrappers over Linux system calls the standard library does not expose.

They go through ctypes rather than spawning ``mount``/``umount`` because a sandbox start does
several of them and every spawned helper costs milliseconds of start latency.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]

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

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# openat2 has the same number on every architecture (it came after the syscall table
# unification), and glibc has no wrapper for it.
_SYS_OPENAT2 = 437


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
    ret = _libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(path), ctypes.byref(how),
                        ctypes.sizeof(how))
    return _check(int(ret), "openat2", path)


_SYS_FCHMODAT2 = 452  # x86_64 and the generic table alike, since Linux 6.6
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1


def chmod_nofollow(dirfd: int, name: str, mode: int) -> None:
    """``name``'s mode, never through a symlink as ``name`` itself (``fchmodat2``; glibc's
    ``lchmod`` needs ``/proc/self/fd``, which a chrooted file helper has not). Before Linux
    6.6 (``ENOSYS``) ``name`` is chmodded as it is, the caller having checked that it was no
    symlink."""
    ret = int(_libc.syscall(_SYS_FCHMODAT2, dirfd, os.fsencode(name), mode,
                            AT_SYMLINK_NOFOLLOW))
    if ret < 0 and ctypes.get_errno() == errno.ENOSYS:
        os.chmod(name, mode, dir_fd=dirfd)
        return
    _check(ret, "fchmodat2", name)


_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]


def rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """``renameat2(RENAME_NOREPLACE)``: EEXIST rather than replace what is at ``dst``, in one
    step (a check then a rename would race with the sandbox's own processes)."""
    _check(int(_libc.renameat2(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst),
                               RENAME_NOREPLACE)), "renameat2", dst)


def openat2_supported() -> bool:
    try:
        fd = openat2(-100, "/", os.O_RDONLY | os.O_DIRECTORY, 0, RESOLVE_IN_ROOT)
    except OSError:
        return False
    os.close(fd)
    return True


def setns(fd: int, nstype: int) -> None:
    """Join the namespace ``fd`` refers to (``os.setns`` arrived only in Python 3.12)."""
    _check(int(_libc.setns(fd, nstype)), "setns")


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32))


def drop_capabilities() -> None:
    """Leave this process no capability at all, in any user namespace, and no way back.

    Needed after ``setresuid`` inside a user namespace that does not map uid 0: the kernel
    clears capabilities on a uid change only when the old uid was that namespace's root, so
    a process that joined the namespace keeps the full set ``setns`` gave it.
    """
    data = (_CapData * 2)()  # all zero: both 32-bit halves of the three sets
    _check(int(_libc.capset(ctypes.byref(_CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)), data)),
           "capset")
    _check(int(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)), "prctl")
    _check(int(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)), "prctl")
    _check(int(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)), "prctl")


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
