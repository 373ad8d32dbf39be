"""File operations on paths as a sandbox sees them.

Every path is resolved by the kernel inside the sandbox's own root (``/proc/<init>/root``
with ``openat2(RESOLVE_IN_ROOT)``): ``..`` and absolute symlinks stop at the sandbox's
``/``, so ``ln -s /root x`` inside a sandbox names the sandbox's ``/root``, never the
host's, and mounts made inside the sandbox are honoured. The last component of a path is
never followed for operations that change it (create, delete, chmod). Permission checks
and ownership are those of the sandbox user (see ``sysutil.thread_fs_identity``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import shutil
import stat as stat_mod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from pulumi_leap0.runner import sysutil
from pulumi_leap0.runner.identity import owner_names
from pulumi_leap0.runner.state import SandboxState
from pulumi_leap0.runner.types import FileInfo

MAX_READ_BYTES = 256 * 1024 * 1024
MAX_LIST_ENTRIES = 50_000
_RESOLVE = sysutil.RESOLVE_IN_ROOT | sysutil.RESOLVE_NO_MAGICLINKS


@dataclass(frozen=True)
class SandboxView:
    """How to reach one running sandbox's files from the host."""

    init_pid: int
    uid: int
    gid: int
    workdir: str
    names: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def of(cls, box: SandboxState, *, dedicated: bool) -> SandboxView:
        """The view of a running sandbox; ``dedicated``: its host ids are its own."""
        return cls(init_pid=box.init_pid, uid=box.host_uid, gid=box.host_gid,
                   workdir=box.workdir,
                   names=owner_names(box.user, box.host_uid, box.host_gid, dedicated=dedicated))


def normalize(path: str, workdir: str) -> str:
    if not path or "\x00" in path:
        raise ValueError("path must be a non-empty string without NUL")
    full = path if path.startswith("/") else posixpath.join(workdir, path)
    return posixpath.normpath(full).replace("//", "/")


@contextlib.contextmanager
def _root(view: SandboxView) -> Iterator[int]:
    # Opened as root (it needs ptrace-read access to the init), used as the sandbox user.
    fd = os.open(f"/proc/{view.init_pid}/root", sysutil.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with sysutil.thread_fs_identity(view.uid, view.gid):
            yield fd
    finally:
        os.close(fd)


def _open(root: int, path: str, flags: int, mode: int = 0) -> int:
    return sysutil.openat2(root, path, flags, mode, _RESOLVE)


@contextlib.contextmanager
def _parent(root: int, path: str) -> Iterator[tuple[int, str]]:
    parent, name = posixpath.split(path)
    if not name:
        raise ValueError("the sandbox root cannot be changed")
    fd = _open(root, parent or "/", sysutil.O_PATH | os.O_DIRECTORY)
    try:
        yield fd, name
    finally:
        os.close(fd)


def _info(view: SandboxView, path: str, name: str, st: os.stat_result,
          link_target: str | None) -> FileInfo:
    return FileInfo(
        name=name or "/",
        path=path,
        is_dir=stat_mod.S_ISDIR(st.st_mode),
        size=st.st_size,
        mode=format(stat_mod.S_IMODE(st.st_mode), "o"),
        mtime=int(st.st_mtime),
        owner=view.names.get(st.st_uid, str(st.st_uid)),
        group=view.names.get(st.st_gid, str(st.st_gid)),
        is_symlink=stat_mod.S_ISLNK(st.st_mode),
        link_target=link_target,
    )


def _stat_at(view: SandboxView, dirfd: int, name: str, path: str) -> FileInfo:
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    target = os.readlink(name, dir_fd=dirfd) if stat_mod.S_ISLNK(st.st_mode) else None
    return _info(view, path, name, st, target)


def stat(view: SandboxView, path: str) -> FileInfo:
    path = normalize(path, view.workdir)
    with _root(view) as root:
        if path == "/":
            return _info(view, "/", "/", os.stat(root), None)
        with _parent(root, path) as (pfd, name):
            return _stat_at(view, pfd, name, path)


def exists(view: SandboxView, path: str) -> bool:
    try:
        stat(view, path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def list_dir(view: SandboxView, path: str, *, recursive: bool = False,
             exclude: Sequence[str] = ()) -> list[FileInfo]:
    path = normalize(path, view.workdir)
    items: list[FileInfo] = []
    with _root(view) as root:
        fd = _open(root, path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _walk(view, fd, path, "", recursive, tuple(exclude), items)
        finally:
            os.close(fd)
    return items


def _excluded(rel: str, name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p) for p in patterns)


def _walk(view: SandboxView, fd: int, path: str, rel: str, recursive: bool,
          exclude: tuple[str, ...], items: list[FileInfo]) -> None:
    with os.scandir(fd) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        child_rel = posixpath.join(rel, name) if rel else name
        if _excluded(child_rel, name, exclude):
            continue
        if len(items) >= MAX_LIST_ENTRIES:
            raise ValueError(f"more than {MAX_LIST_ENTRIES} entries: list a smaller tree")
        child_path = posixpath.join(path, name)
        try:
            info = _stat_at(view, fd, name, child_path)
        except FileNotFoundError:
            continue  # removed while listing
        items.append(info)
        if recursive and info.is_dir and not info.is_symlink:
            try:
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except PermissionError:
                continue
            try:
                _walk(view, sub, child_path, child_rel, recursive, exclude, items)
            finally:
                os.close(sub)


def mkdir(view: SandboxView, path: str, *, recursive: bool = False, mode: int = 0o755) -> None:
    path = normalize(path, view.workdir)
    with _root(view) as root:
        _mkdir(root, path, recursive, mode)


def _mkdir(root: int, path: str, recursive: bool, mode: int) -> None:
    if path == "/":
        if recursive:
            return
        raise FileExistsError(17, "File exists", path)
    if recursive:
        parent = posixpath.dirname(path)
        try:
            os.close(_open(root, parent, sysutil.O_PATH | os.O_DIRECTORY))
        except FileNotFoundError:
            _mkdir(root, parent, True, mode)
    with _parent(root, path) as (pfd, name):
        try:
            os.mkdir(name, mode, dir_fd=pfd)
        except FileExistsError:
            if not recursive:
                raise
            st = os.stat(name, dir_fd=pfd, follow_symlinks=True)
            if not stat_mod.S_ISDIR(st.st_mode):
                raise
            return
        # mkdir honours the umask; the caller asked for these exact bits.
        with contextlib.suppress(OSError):
            os.chmod(name, mode, dir_fd=pfd, follow_symlinks=False)


def write_file(view: SandboxView, path: str, content: bytes, *, mode: int | None = None) -> None:
    path = normalize(path, view.workdir)
    with _root(view) as root:
        parent = posixpath.dirname(path)
        if parent != "/":
            _mkdir(root, parent, True, 0o755)
        with _parent(root, path) as (pfd, name):
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644 if mode is None else mode, dir_fd=pfd)
            try:
                view_mem = memoryview(content)
                while view_mem:
                    written = os.write(fd, view_mem)
                    view_mem = view_mem[written:]
                if mode is not None:
                    os.fchmod(fd, mode)
            finally:
                os.close(fd)


def read_file(view: SandboxView, path: str) -> bytes:
    path = normalize(path, view.workdir)
    with _root(view) as root:
        fd = _open(root, path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if stat_mod.S_ISDIR(st.st_mode):
                raise IsADirectoryError(21, "Is a directory", path)
            chunks: list[bytes] = []
            total = 0
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                if total > MAX_READ_BYTES:
                    raise ValueError(f"file larger than {MAX_READ_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)


def delete(view: SandboxView, path: str, *, recursive: bool = False) -> None:
    path = normalize(path, view.workdir)
    with _root(view) as root, _parent(root, path) as (pfd, name):
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if not stat_mod.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=pfd)
        elif recursive:
            shutil.rmtree(name, dir_fd=pfd)
        else:
            os.rmdir(name, dir_fd=pfd)
