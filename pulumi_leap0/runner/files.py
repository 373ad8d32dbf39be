"""What a file call does, run by the sandbox's own file helper (``fileserver.py``).

The helper is a process of the sandbox: the sandbox user's uid and gid in the sandbox's
user namespace, no capabilities anywhere, in the sandbox's cgroup, chrooted into its root.
So the kernel checks every call as it would a program inside: ``/proc/kallsyms`` shows
zeros, ``/proc/1/stack`` is denied, a read-only path is read-only, and the pages a call
touches are the sandbox's. Every path is resolved inside the sandbox's root fd with
``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)``: ``..`` and absolute symlinks stop at
the sandbox's ``/``, ``/proc/<pid>/root`` and the other magic links are refused, mounts made
inside are honoured. The last component is never followed by a call that changes it.

Only regular files are read or written, opened non-blocking: a FIFO, a device or a socket
is refused before it can block a call or stream forever. Walks (``ls``, recursive delete)
are iterative and bounded in entries and depth; the helper bounds every call in time.

Nothing here imports the API contract, so the helper starts lean: the limits come with
each request from the runner, which takes them from ``spec.py``. ``normalize`` is shared
with the host side (``exec.py``, ``filecalls.py``).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import re
import stat as stat_mod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pulumi_leap0.runner import sysutil

CHUNK = 256 * 1024
_RESOLVE = sysutil.RESOLVE_IN_ROOT | sysutil.RESOLVE_NO_MAGICLINKS
_MAX_ID_FILE = 1024 * 1024


class Refused(Exception):
    """A call this module will not do: ``field`` names the input, ``message`` says why."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class Failed(Exception):
    """What the kernel answered about one input of a call that takes several (``src_path``,
    ``files[2]``): the errno, and the input it was about."""

    def __init__(self, field: str, errno: int) -> None:
        super().__init__(os.strerror(errno))
        self.field = field
        self.errno = errno


@contextlib.contextmanager
def blame(field: str) -> Iterator[None]:
    """Errors inside are about ``field``: a ``Refused`` names it, an ``OSError`` becomes a
    ``Failed`` for it."""
    try:
        yield
    except Refused as exc:
        if exc.field == "path" and field != "path":
            raise Refused(field, exc.message) from None
        raise
    except OSError as exc:
        if not exc.errno:
            raise
        raise Failed(field, exc.errno) from None


@dataclass(frozen=True)
class Names:
    """Owner and group names as the sandbox knows them: its own ``/etc/passwd`` and
    ``/etc/group``, read once through its root, as ``ls -l`` inside would."""

    users: dict[int, str] = field(default_factory=dict)
    groups: dict[int, str] = field(default_factory=dict)

    @classmethod
    def of_root(cls, root: int) -> Names:
        return cls(users=_id_names(root, "/etc/passwd"), groups=_id_names(root, "/etc/group"))


def _id_names(root: int, path: str) -> dict[int, str]:
    names: dict[int, str] = {}
    try:
        fd, _ = open_regular(root, path)
    except (OSError, Refused):
        return names
    try:
        text = os.read(fd, _MAX_ID_FILE).decode("utf-8", "replace")
    finally:
        os.close(fd)
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            names.setdefault(int(parts[2]), parts[0])
    return names


def normalize(path: str, workdir: str) -> str:
    if not path or "\x00" in path:
        raise ValueError("path must be a non-empty string without NUL")
    full = path if path.startswith("/") else posixpath.join(workdir, path)
    return posixpath.normpath(full).replace("//", "/")


def _open(root: int, path: str, flags: int, mode: int = 0) -> int:
    return sysutil.openat2(root, path, flags, mode, _RESOLVE)


def _split(path: str, what: str) -> tuple[str, str]:
    parent, name = posixpath.split(path)
    if not name:
        raise Refused("path", f"is the sandbox's root, which cannot be {what}")
    return parent or "/", name


def _text(name: str) -> str:
    # Names are bytes to the kernel; JSON wants text. Undecodable bytes become U+FFFD.
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _info(names: Names, path: str, name: str, st: os.stat_result,
          link_target: str | None) -> dict[str, Any]:
    return {
        "name": _text(name) or "/",
        "path": _text(path),
        "is_dir": stat_mod.S_ISDIR(st.st_mode),
        "size": st.st_size,
        "mode": format(stat_mod.S_IMODE(st.st_mode), "o"),
        "mtime": int(st.st_mtime),
        "owner": names.users.get(st.st_uid, str(st.st_uid)),
        "group": names.groups.get(st.st_gid, str(st.st_gid)),
        "is_symlink": stat_mod.S_ISLNK(st.st_mode),
        "link_target": None if link_target is None else _text(link_target),
    }


def _stat_at(names: Names, dirfd: int, name: str, path: str) -> tuple[dict[str, Any],
                                                                      os.stat_result]:
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    target = os.readlink(name, dir_fd=dirfd) if stat_mod.S_ISLNK(st.st_mode) else None
    return _info(names, path, name, st, target), st


# --- Metadata -------------------------------------------------------------------------------


def stat(root: int, names: Names, path: str) -> dict[str, Any]:
    if path == "/":
        return _info(names, "/", "/", os.stat(root), None)
    parent, name = _split(path, "named")
    pfd = _open(root, parent, sysutil.O_PATH | os.O_DIRECTORY)
    try:
        return _stat_at(names, pfd, name, path)[0]
    finally:
        os.close(pfd)


def exists(root: int, names: Names, path: str) -> bool:
    try:
        stat(root, names, path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _matcher(patterns: Sequence[str]) -> Callable[[str, str], bool]:
    """Whether an entry's name or its path below the listed directory matches a pattern.

    A pattern's regex is tried only on a text that holds its longest literal run, and one
    search for all those runs at once rules out nearly every entry: a hundred patterns over
    fifty thousand entries cost about a second, not minutes."""
    always: list[Callable[[str], object]] = []
    by_literal: dict[str, list[Callable[[str], object]]] = {}
    for pattern in patterns:
        match = re.compile(fnmatch.translate(pattern)).match
        literals = _literals(pattern)
        if literals:
            by_literal.setdefault(max(literals, key=len), []).append(match)
        else:
            always.append(match)
    hint = re.compile("|".join(map(re.escape, sorted(by_literal, key=len, reverse=True))))

    def excluded(name: str, rel: str) -> bool:
        # ``name`` ends ``rel``: a literal missing from ``rel`` is missing from both.
        candidates = list(always)
        if by_literal and hint.search(rel):
            candidates += [m for lit, ms in by_literal.items() if lit in rel for m in ms]
        return any(match(name) or match(rel) for match in candidates)

    return excluded


def _literals(pattern: str) -> list[str]:
    """The runs of ``pattern`` that match only themselves, split where ``fnmatch`` sees a
    wildcard (``*``, ``?``, a complete ``[...]``); an unclosed ``[`` is literal there too."""
    runs, current, i, n = [], "", 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c in "*?":
            runs.append(current)
            current = ""
        elif c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                current += c
            else:
                runs.append(current)
                current = ""
                i = j + 1
        else:
            current += c
    runs.append(current)
    return [run for run in runs if run]


def list_dir(root: int, names: Names, path: str, *, recursive: bool, exclude: Sequence[str],
             max_entries: int, max_depth: int) -> list[dict[str, Any]]:
    """The entries below ``path``, sorted, depth first; a directory that matches
    ``exclude`` is neither listed nor entered."""
    excluded = _matcher(exclude)
    items: list[dict[str, Any]] = []
    # Entries looked at, listed or not, bound the work as ``max_entries`` bounds the answer.
    tree = _Tree(_open(root, path, os.O_RDONLY | os.O_DIRECTORY), -1, path,
                 max_depth=max_depth, budget=4 * max_entries,
                 too_deep=f"is deeper than {max_depth} levels: list a shallower tree")
    with contextlib.closing(tree):
        for level, name in tree.entries():
            rel = f"{level.rel}/{name}" if level.rel else name
            if excluded(name, rel):
                continue
            if len(items) >= max_entries:
                raise Refused("path", f"has more than {max_entries} entries: list a smaller "
                              "tree, or exclude some")
            child = posixpath.join(level.name, name)
            try:
                info, st = _stat_at(names, level.fd, name, child)
            except FileNotFoundError:
                continue  # removed while listing
            items.append(info)
            if recursive and stat_mod.S_ISDIR(st.st_mode):
                with contextlib.suppress(PermissionError, FileNotFoundError, NotADirectoryError):
                    tree.enter(level, name, child, rel)
    return items


@dataclass
class _Level:
    fd: int
    parent: int  # the fd of the level above; the caller's for the top
    name: str  # the level's path (list_dir) or its name in ``parent`` (delete)
    rel: str
    pending: Iterator[str]


class _Tree:
    """A depth-first walk by directory fds: one fd open per level and no recursion, since a
    sandbox can make a tree deeper than the interpreter's recursion limit; at most
    ``max_depth`` levels and ``budget`` entries looked at. ``on_leave`` runs for each
    level once all of it was walked (a recursive delete removes it then)."""

    def __init__(self, fd: int, parent: int, name: str, *, max_depth: int, budget: int,
                 too_deep: str, on_leave: Callable[[_Level], None] | None = None) -> None:
        self._budget = [budget]
        self._max_depth, self._too_deep, self._on_leave = max_depth, too_deep, on_leave
        self._stack: list[_Level] = []
        self._push(fd, parent, name, "")

    def entries(self) -> Iterator[tuple[_Level, str]]:
        while self._stack:
            level = self._stack[-1]
            name = next(level.pending, None)
            if name is None:
                self._stack.pop()
                os.close(level.fd)
                if self._on_leave is not None:
                    self._on_leave(level)
                continue
            yield level, name

    def enter(self, level: _Level, name: str, label: str, rel: str) -> None:
        """Walk ``name``, a directory of ``level``, next (``label`` becomes its name)."""
        if len(self._stack) >= self._max_depth:
            raise Refused("path", self._too_deep)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                     dir_fd=level.fd)
        self._push(fd, level.fd, label, rel)

    def _push(self, fd: int, parent: int, name: str, rel: str) -> None:
        try:
            pending = iter(_entry_names(fd, self._budget))
        except BaseException:
            os.close(fd)
            raise
        self._stack.append(_Level(fd, parent, name, rel, pending))

    def close(self) -> None:
        while self._stack:
            os.close(self._stack.pop().fd)


def _entry_names(fd: int, budget: list[int]) -> list[str]:
    found: list[str] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            budget[0] -= 1
            if budget[0] < 0:
                raise Refused("path", "holds too many entries to list: list a smaller tree")
            found.append(entry.name)
    return sorted(found)


# --- Changes --------------------------------------------------------------------------------


def mkdir(root: int, path: str, *, recursive: bool, mode: int) -> None:
    if path == "/":
        if recursive:
            return
        raise FileExistsError(17, "File exists")
    if recursive:
        _make_parents(root, path, mode)
    _make_one(root, path, mode, exist_ok=recursive)


def _make_parents(root: int, path: str, mode: int) -> None:
    """Every missing ancestor of ``path``, outermost first; no recursion, so a path of two
    thousand components is as fine as one of two."""
    missing: list[str] = []
    current = posixpath.dirname(path)
    while current != "/":
        try:
            os.close(_open(root, current, sysutil.O_PATH | os.O_DIRECTORY))
            break
        except FileNotFoundError:
            missing.append(current)
            current = posixpath.dirname(current)
    for ancestor in reversed(missing):
        _make_one(root, ancestor, mode, exist_ok=True)


def _make_one(root: int, path: str, mode: int, *, exist_ok: bool) -> None:
    parent, name = _split(path, "made")
    pfd = _open(root, parent, sysutil.O_PATH | os.O_DIRECTORY)
    try:
        try:
            os.mkdir(name, mode, dir_fd=pfd)
        except FileExistsError:
            if not exist_ok or not stat_mod.S_ISDIR(os.stat(name, dir_fd=pfd).st_mode):
                raise
            return
        # mkdir honours the umask; the caller asked for these exact bits. By an fd of the
        # directory itself: the name may have been swapped for a symlink meanwhile.
        made = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                       dir_fd=pfd)
        try:
            os.fchmod(made, mode)
        finally:
            os.close(made)
    finally:
        os.close(pfd)


def delete(root: int, path: str, *, recursive: bool, max_depth: int) -> None:
    parent, name = _split(path, "deleted")
    pfd = _open(root, parent, sysutil.O_PATH | os.O_DIRECTORY)
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if not stat_mod.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=pfd)
        elif recursive:
            _remove_tree(pfd, name, max_depth)
        else:
            os.rmdir(name, dir_fd=pfd)
    finally:
        os.close(pfd)


def _remove_tree(parent: int, name: str, max_depth: int) -> None:
    """``rm -r`` by directory fds: ``shutil.rmtree`` recurses in Python."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                 dir_fd=parent)
    tree = _Tree(fd, parent, name, max_depth=max_depth, budget=1 << 62,  # time bounds it
                 too_deep=f"is deeper than {max_depth} levels: delete it from inside the "
                 "sandbox", on_leave=lambda level: os.rmdir(level.name, dir_fd=level.parent))
    with contextlib.closing(tree):
        for level, child in tree.entries():
            if stat_mod.S_ISDIR(os.stat(child, dir_fd=level.fd, follow_symlinks=False).st_mode):
                tree.enter(level, child, child, "")
            else:
                os.unlink(child, dir_fd=level.fd)


# --- Contents -------------------------------------------------------------------------------


def open_regular(root: int, path: str) -> tuple[int, os.stat_result]:
    """``path`` opened for reading if it is a regular file (the fd blocking again)."""
    try:
        fd = _open(root, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        if exc.errno in (6, 19):  # ENXIO, ENODEV: a socket or a device without a driver
            raise Refused("path", "is not a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if stat_mod.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory")
        if not stat_mod.S_ISREG(st.st_mode):
            raise Refused("path", "is not a regular file: only regular files are read")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def open_for_write(root: int, path: str, mode: int | None) -> int:
    """``path`` opened for writing, made (with its parents) if missing, emptied; only a
    regular file, and never through a symlink as its last component."""
    parent, name = _split(path, "written")
    if parent != "/":
        _make_parents(root, path, 0o755)
    pfd = _open(root, parent, sysutil.O_PATH | os.O_DIRECTORY)
    try:
        flags = (os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                 | os.O_CLOEXEC)
        try:
            fd = os.open(name, flags, 0o644 if mode is None else mode, dir_fd=pfd)
        except OSError as exc:
            if exc.errno in (6, 19):  # ENXIO: a FIFO nobody reads; ENODEV
                raise Refused("path", "is not a regular file") from None
            raise
    finally:
        os.close(pfd)
    try:
        st = os.fstat(fd)
        if not stat_mod.S_ISREG(st.st_mode):
            raise Refused("path", "is not a regular file: only regular files are written")
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        if mode is not None:
            os.fchmod(fd, mode)  # the umask, or the bits of a file that existed
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
