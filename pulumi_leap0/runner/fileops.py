"""Changes to a sandbox's files beyond one write or delete (``set-permissions``,
``edit-file(s)``, ``move``, ``copy``, ``write-files``), run by its file helper.

The rules of ``files.py`` hold: every path resolved with ``openat2`` in the sandbox's root,
the last component of a path being changed never followed, only regular files read or
written, walks bounded. A call that makes something new (a copy, a batch of writes) makes
it under a temporary name beside its destination and renames it into place only once all
of it is there, so a failure (a full disk, a refusal, the deadline) leaves nothing half
made: what was made is removed, and the destination is as it was.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
import secrets
import stat as stat_mod
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pulumi_leap0.runner import files, sysutil

_DIR = sysutil.O_PATH | os.O_DIRECTORY
_COPY_CHUNK = 8 * 1024 * 1024
#: A copy stops this long before its deadline, to leave time to remove what it made.
_CLEANUP_S = 3.0


@contextlib.contextmanager
def _parent(root: int, path: str, what: str) -> Iterator[tuple[int, str]]:
    parent, name = files._split(path, what)
    fd = files._open(root, parent, _DIR)
    try:
        yield fd, name
    finally:
        os.close(fd)


def _temp_name(name: str) -> str:
    return f".{name[:200]}.leap0-{secrets.token_hex(6)}"


# --- set-permissions ------------------------------------------------------------------------


def set_permissions(root: int, names: files.Names, path: str, *, mode: int | None,
                    owner: str | None, group: str | None) -> None:
    """``chown`` then ``chmod`` (a change of owner clears set-id bits), as the sandbox user:
    the kernel allows a new owner or group only where that user may give it."""
    uid = -1 if owner is None else _id_of("owner", owner, names.users)
    gid = -1 if group is None else _id_of("group", group, names.groups)
    with _parent(root, path, "changed") as (pfd, name):
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if uid != -1 or gid != -1:
            # The errors are about the new owner (EPERM: not the sandbox user's to give;
            # EINVAL: an id the sandbox's user namespace does not map).
            with files.blame("owner" if owner is not None else "group"):
                os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
        if mode is not None:
            if stat_mod.S_ISLNK(st.st_mode):
                raise files.Refused("path", "is a symbolic link, which has no mode of its own")
            sysutil.chmod_nofollow(pfd, name, mode)


def _id_of(field: str, value: str, known: dict[int, str]) -> int:
    by_name = {name: number for number, name in known.items()}
    if value in by_name:
        return by_name[value]
    if value.isdigit() and len(value) <= 10 and int(value) < 2**32 - 1:
        return int(value)
    raise files.Refused(field, f"is not a {field} the sandbox knows (its /etc/"
                        f"{'passwd' if field == 'owner' else 'group'})")


# --- edit-file, edit-files ------------------------------------------------------------------


def edit_file(root: int, path: str, edits: Sequence[tuple[str, str]], *,
              max_bytes: int, diff: bool = True) -> dict[str, Any]:
    """Each edit replaces every occurrence of its ``find``, in order; all or nothing. The
    file is changed in place (its inode, owner, mode and links stay), after its new size is
    reserved, so a full disk refuses the edit before any byte changes."""
    fd = files._open(root, path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    with contextlib.closing(_Fd(fd)):
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise files.Refused("path", "is not a regular file: only regular files are edited")
        if st.st_size > max_bytes:
            raise files.Refused("path", f"is larger than {max_bytes} bytes: edit it from "
                                "inside the sandbox")
        os.set_blocking(fd, True)
        old = _read_all(fd, max_bytes)
        new = old
        total = 0
        for index, (find, replace) in enumerate(edits):
            needle = find.encode("utf-8", "surrogateescape")
            count = new.count(needle)
            if count == 0:
                raise files.Refused(f"edits[{index}].find", "was not found in the file")
            new = new.replace(needle, replace.encode("utf-8", "surrogateescape"))
            total += count
        if new != old:
            if len(new) > len(old):
                with _reserve():
                    os.posix_fallocate(fd, 0, len(new))
            view = memoryview(new)
            at = 0
            while at < len(view):
                at += os.pwrite(fd, view[at:], at)
            os.ftruncate(fd, len(new))
        return {"diff": _diff(path, old, new) if diff else "", "replacements": total}


@contextlib.contextmanager
def _reserve() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it
            raise


def _read_all(fd: int, max_bytes: int) -> bytes:
    parts, total = [], 0
    while total <= max_bytes:
        chunk = os.read(fd, min(files.CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    if total > max_bytes:
        raise files.Refused("path", f"is larger than {max_bytes} bytes: edit it from inside "
                            "the sandbox")
    return b"".join(parts)


def _diff(path: str, old: bytes, new: bytes) -> str:
    before = old.decode("utf-8", "replace").splitlines(keepends=True)
    after = new.decode("utf-8", "replace").splitlines(keepends=True)
    shown = files._text(path)
    return "".join(difflib.unified_diff(before, after, fromfile=shown, tofile=shown))


def edit_files(root: int, paths: Sequence[str], find: str, replace: str, *,
               max_bytes: int) -> list[dict[str, Any]]:
    """``find`` replaced by ``replace`` in each file, each on its own: one that fails says
    why in its item and the others are still edited."""
    items: list[dict[str, Any]] = []
    for path in paths:
        try:
            edit_file(root, path, [(find, replace)], max_bytes=max_bytes, diff=False)
        except files.Refused as exc:
            message = "find was not found in the file" if exc.field.startswith("edits") else (
                exc.message)
            items.append({"file": files._text(path), "success": False, "error": message})
        except OSError as exc:
            items.append({"file": files._text(path), "success": False,
                          "error": os.strerror(exc.errno or errno.EIO).lower()})
        else:
            items.append({"file": files._text(path), "success": True})
    return items


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


# --- move, copy -----------------------------------------------------------------------------


def _inside(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def move(root: int, src: str, dst: str, *, overwrite: bool, deadline: float,
         max_entries: int, max_depth: int) -> None:
    """``rename``, never following either last component; across file systems (``/tmp``
    and ``/home/user`` are separate mounts) a copy, then the source's removal."""
    if _inside(dst, src):
        raise files.Refused("dst_path", "is src_path or inside it")
    with files.blame("src_path"), _parent(root, src, "moved") as (spfd, sname):
        st = os.stat(sname, dir_fd=spfd, follow_symlinks=False)
        with files.blame("dst_path"), _parent(root, dst, "moved onto") as (dpfd, dname):
            try:
                if overwrite:
                    os.rename(sname, dname, src_dir_fd=spfd, dst_dir_fd=dpfd)
                else:
                    sysutil.rename_noreplace(spfd, sname, dpfd, dname)
                return
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY or (overwrite and exc.errno == errno.EEXIST):
                    raise files.Refused("dst_path", "is a directory that is not empty") from None
                if exc.errno != errno.EXDEV:
                    raise
            if stat_mod.S_ISLNK(st.st_mode):  # a symlink moves as itself, never followed
                temp = _temp_name(dname)
                os.symlink(os.readlink(sname, dir_fd=spfd), temp, dir_fd=dpfd)
                try:
                    _place(dpfd, temp, dname, _lstat(dpfd, dname) if overwrite else None,
                           max_depth)
                except BaseException:
                    os.unlink(temp, dir_fd=dpfd)
                    raise
                os.unlink(sname, dir_fd=spfd)
                return
    copy(root, src, dst, recursive=True, overwrite=overwrite, deadline=deadline,
         max_entries=max_entries, max_depth=max_depth, follow=False)
    with files.blame("src_path"):
        files.delete(root, src, recursive=True, max_depth=max_depth)


def copy(root: int, src: str, dst: str, *, recursive: bool, overwrite: bool, deadline: float,
         max_entries: int, max_depth: int, follow: bool = True) -> None:
    """``src`` (a file, or with ``recursive`` a directory: its files, directories and
    symlinks; FIFOs, sockets and devices are left out) made anew at ``dst``. ``src`` itself
    may be a symlink, followed inside the sandbox's root; the symlinks below it are copied
    as symlinks."""
    if _inside(dst, src):
        raise files.Refused("dst_path", "is src_path or inside it")
    stop = deadline - _CLEANUP_S
    with files.blame("src_path"):
        if follow:
            source = files._open(root, src, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        else:
            with _parent(root, src, "copied") as (spfd, sname):
                source = os.open(sname, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
                                 | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=spfd)
    with contextlib.closing(_Fd(source)):
        st = os.fstat(source)
        if stat_mod.S_ISDIR(st.st_mode):
            if not recursive:
                raise files.Refused("recursive", "must be true to copy a directory")
        elif not stat_mod.S_ISREG(st.st_mode):
            raise files.Refused("src_path", "is not a regular file or a directory")
        else:
            os.set_blocking(source, True)
        with files.blame("dst_path"), _parent(root, dst, "copied onto") as (dpfd, dname):
            existing = _lstat(dpfd, dname)
            if existing is not None and not overwrite:
                raise FileExistsError(errno.EEXIST, "File exists")
            temp = _temp_name(dname)
            made = _Made(dpfd, temp)
            try:
                with files.blame("src_path"):
                    if stat_mod.S_ISDIR(st.st_mode):
                        made.is_dir = True
                        _copy_tree(source, dpfd, temp, st, stop, max_entries, max_depth)
                    else:
                        _copy_file(source, dpfd, temp, st, stop)
                _place(dpfd, temp, dname, existing, max_depth)
            except BaseException:
                made.remove(max_depth)
                raise


def _lstat(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _place(dirfd: int, temp: str, name: str, existing: os.stat_result | None,
           max_depth: int) -> None:
    """``temp`` renamed to ``name``: over what is there only if ``existing`` says it was
    there to replace (a directory is removed first, as ``rename`` replaces only empty
    ones); otherwise never over anything made there meanwhile."""
    if existing is None:
        sysutil.rename_noreplace(dirfd, temp, dirfd, name)
        return
    if stat_mod.S_ISDIR(existing.st_mode):
        files._remove_tree(dirfd, name, max_depth)
    os.rename(temp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)


@dataclass
class _Made:
    dirfd: int
    name: str
    is_dir: bool = False

    def remove(self, max_depth: int) -> None:
        with contextlib.suppress(OSError, files.Refused):
            if self.is_dir:
                files._remove_tree(self.dirfd, self.name, max_depth)
            else:
                os.unlink(self.name, dir_fd=self.dirfd)


def _late(stop: float) -> None:
    if time.monotonic() > stop:
        raise files.Refused("src_path", "takes too long to copy: copy less at a time")


def _copy_file(source: int, dirfd: int, name: str, st: os.stat_result, stop: float) -> None:
    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                  stat_mod.S_IMODE(st.st_mode) & 0o777, dir_fd=dirfd)
    with contextlib.closing(_Fd(out)):
        offset = 0
        while True:
            _late(stop)
            try:
                sent = os.copy_file_range(source, out, _COPY_CHUNK, offset, offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                sent = os.sendfile(out, source, offset, _COPY_CHUNK)
            if sent == 0:
                return
            offset += sent


def _copy_tree(source: int, dirfd: int, name: str, st: os.stat_result, stop: float,
               max_entries: int, max_depth: int) -> None:
    """By directory fds on both sides, iteratively (a tree may be deeper than Python's
    recursion limit); each directory gets its mode once it is filled, so a read-only
    directory of the source is copied with its contents."""
    os.mkdir(name, 0o700, dir_fd=dirfd)
    top = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                  dir_fd=dirfd)
    budget = [max_entries]
    # (source dir, copy dir, the source's mode, names left)
    stack: list[tuple[int, int, int, Iterator[str]]] = [
        (os.dup(source), top, stat_mod.S_IMODE(st.st_mode),
         iter(files._entry_names(source, budget)))]
    try:
        while stack:
            src_dir, out_dir, mode, pending = stack[-1]
            child = next(pending, None)
            if child is None:
                stack.pop()
                os.fchmod(out_dir, mode)
                os.close(src_dir)
                os.close(out_dir)
                continue
            _late(stop)
            cst = os.stat(child, dir_fd=src_dir, follow_symlinks=False)
            if stat_mod.S_ISDIR(cst.st_mode):
                if len(stack) >= max_depth:
                    raise files.Refused("src_path", f"is deeper than {max_depth} levels: copy "
                                        "it from inside the sandbox")
                sub = os.open(child, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                              | os.O_CLOEXEC, dir_fd=src_dir)
                try:
                    os.mkdir(child, 0o700, dir_fd=out_dir)
                    out = os.open(child, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, dir_fd=out_dir)
                except BaseException:
                    os.close(sub)
                    raise
                try:
                    names = iter(files._entry_names(sub, budget))
                except BaseException:
                    os.close(sub)
                    os.close(out)
                    raise
                stack.append((sub, out, stat_mod.S_IMODE(cst.st_mode), names))
            elif stat_mod.S_ISREG(cst.st_mode):
                fd = os.open(child, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY
                             | os.O_CLOEXEC, dir_fd=src_dir)
                with contextlib.closing(_Fd(fd)):
                    if stat_mod.S_ISREG(os.fstat(fd).st_mode):
                        os.set_blocking(fd, True)
                        _copy_file(fd, out_dir, child, cst, stop)
            elif stat_mod.S_ISLNK(cst.st_mode):
                os.symlink(os.readlink(child, dir_fd=src_dir), child, dir_fd=out_dir)
    finally:
        for src_dir, out_dir, _, _ in stack:
            os.close(src_dir)
            os.close(out_dir)


# --- write-files ----------------------------------------------------------------------------


@dataclass
class Staged:
    """One file of a batch, written under a temporary name beside its destination."""

    dirfd: int
    name: str
    temp: str
    fd: int
    mode: int | None  # the mode of the file it replaces, kept

    def write(self, data: bytes) -> None:
        files.write_all(self.fd, data)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            os.unlink(self.temp, dir_fd=self.dirfd)
        with contextlib.suppress(OSError):
            os.close(self.dirfd)


def stage(root: int, path: str) -> Staged:
    """A temporary file beside ``path`` (its parents made), to be renamed over it."""
    parent, name = files._split(path, "written")
    if parent != "/":
        files._make_parents(root, path, 0o755)
    pfd = files._open(root, parent, _DIR)
    try:
        existing = _lstat(pfd, name)
        if existing is not None and stat_mod.S_ISDIR(existing.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory")
        mode = None
        if existing is not None and stat_mod.S_ISREG(existing.st_mode):
            mode = stat_mod.S_IMODE(existing.st_mode)
        temp = _temp_name(name)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=pfd)
    except BaseException:
        os.close(pfd)
        raise
    return Staged(pfd, name, temp, fd, mode)


def commit(staged: Sequence[Staged]) -> None:
    """Every staged file into place, each by one ``rename`` (a sandbox process never sees
    one half written)."""
    for item in staged:
        if item.mode is not None:
            os.fchmod(item.fd, item.mode)
        os.close(item.fd)
        item.fd = -1
    for item in staged:
        os.rename(item.temp, item.name, src_dir_fd=item.dirfd, dst_dir_fd=item.dirfd)
        os.close(item.dirfd)
        item.dirfd = -1
