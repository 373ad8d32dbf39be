"""Searches of a sandbox's files (``glob``, ``grep``, ``tree``), run by its file helper.

The same rules as ``files.py``: the walk starts from a directory opened with ``openat2`` in
the sandbox's root, goes down by directory fds with ``O_NOFOLLOW`` (a symlink is listed,
never entered), reads only regular files, opened non-blocking (a FIFO or ``/dev/zero`` is
never read), and is bounded in entries looked at, in depth and in what it answers. Each
call is bounded in time by its deadline: the helper's worker is killed there, whatever it
was doing, since one ``re`` search on one long line can run for ever (Python's ``re``
backtracks; a linear-time engine would need a dependency the helper cannot count on).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import re
import stat as stat_mod
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pulumi_leap0.runner import files, sysutil

#: Bytes whose first NUL marks a file as binary, as grep decides it: such files are skipped.
_BINARY_PROBE = 8192


@dataclass(frozen=True)
class Bounds:
    """What one walk may look at (``entries``, ``depth``) and answer (``results``)."""

    entries: int
    depth: int
    results: int
    deadline: float


@dataclass(frozen=True)
class _Entry:
    dirfd: int  # the directory that holds it, open for the time of the visit
    name: str
    rel: str  # below the walk's top, "/"-separated
    st: os.stat_result


def _walk(root: int, path: str, exclude: Sequence[str], bounds: Bounds,
          *, descend: Callable[[_Entry], bool] = lambda _: True) -> Iterator[_Entry]:
    """Every entry below ``path``, sorted, depth first; excluded ones are neither given nor
    entered. A directory is given before its contents (which ``descend`` may skip)."""
    excluded = files._matcher(exclude)
    top = files._open(root, path, os.O_RDONLY | os.O_DIRECTORY)
    tree = files._Tree(top, -1, path, max_depth=bounds.depth, budget=bounds.entries,
                       too_deep=f"is deeper than {bounds.depth} levels: search a smaller tree")
    with contextlib.closing(tree):
        for level, name in tree.entries():
            if time.monotonic() > bounds.deadline:
                raise files.Refused("path", "took too long to search: search a smaller tree")
            rel = f"{level.rel}/{name}" if level.rel else name
            if excluded(name, rel):
                continue
            try:
                st = os.stat(name, dir_fd=level.fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed meanwhile
            entry = _Entry(level.fd, name, rel, st)
            yield entry
            if stat_mod.S_ISDIR(st.st_mode) and descend(entry):
                with contextlib.suppress(PermissionError, FileNotFoundError, NotADirectoryError):
                    tree.enter(level, name, name, rel)


# --- glob -----------------------------------------------------------------------------------


def glob(root: int, path: str, pattern: str | None, exclude: Sequence[str],
         bounds: Bounds) -> list[str]:
    """The paths below ``path`` that ``pattern`` matches. A pattern without ``/`` matches
    an entry's name at any depth (``*.py``); one with ``/`` matches its path below ``path``,
    where a ``**`` component stands for any number of directories (``src/**/*.py``)."""
    matches = _glob_matcher(pattern or "*")
    found: list[str] = []
    for entry in _walk(root, path, exclude, bounds):
        if matches(entry.rel):
            if len(found) >= bounds.results:
                raise files.Refused("pattern", f"matches more than {bounds.results} paths: "
                                    "narrow it, or exclude some")
            found.append(files._text(posixpath.join(path, entry.rel)))
    return found


def _glob_matcher(pattern: str) -> Callable[[str], bool]:
    """Component by component: ``fnmatch``'s translation of one component is linear in
    time (no nested quantifiers since Python 3.9), and ``**`` is matched here by a table over
    components, not by a regex, so no pattern can make matching backtrack."""
    if "/" not in pattern.strip("/"):
        one = re.compile(fnmatch.translate(pattern.strip("/"))).match
        return lambda rel: one(rel.rpartition("/")[2]) is not None
    parts = [p for p in pattern.strip("/").split("/") if p not in ("", ".")]
    compiled: list[Callable[[str], object] | None] = [
        None if p == "**" else re.compile(fnmatch.translate(p)).match for p in parts]

    def matches(rel: str) -> bool:
        names = rel.split("/")
        # reach[j]: the pattern's components so far can match exactly names[:j].
        reach = [True] + [False] * len(names)
        for part in compiled:
            if part is None:
                for j in range(1, len(reach)):
                    reach[j] = reach[j] or reach[j - 1]
            else:
                reach = [False] + [reach[j] and part(names[j]) is not None
                                   for j in range(len(names))]
        return reach[-1]

    return matches


# --- grep -----------------------------------------------------------------------------------


def grep(root: int, path: str, pattern: str, include: str | None, exclude: Sequence[str],
         bounds: Bounds, *, max_file_bytes: int, max_line_chars: int) -> list[dict[str, Any]]:
    """Lines that match the regular expression ``pattern``, in the files below ``path``
    (or in ``path``, a file) whose name matches ``include``; at most ``bounds.results``
    matches, the first ones in walk order. Binary files and files over ``max_file_bytes``
    are skipped; a line's content is cut at ``max_line_chars``."""
    try:
        regex = re.compile(pattern)
    except (re.error, RecursionError, OverflowError):
        raise files.Refused("pattern", "is not a valid regular expression") from None
    # One scan of a whole file first, in re's C loop, rules out most files at once: a line
    # that matches matches the whole text in MULTILINE mode, except for patterns that look
    # at what ends a line (\A, \Z, lookarounds, a newline), which skip this.
    line_bound = any(mark in pattern for mark in ("\\A", "\\Z", "(?!", "(?<", "\\n", "\n"))
    anywhere = None if line_bound else re.compile(pattern, re.MULTILINE)
    wanted = None if not include else re.compile(fnmatch.translate(include)).match
    found: list[dict[str, Any]] = []

    def search(fd: int, shown: str) -> None:
        text = _text_of(fd, max_file_bytes)
        if text is None:
            return
        # "$" before a "\r\n" matches only once the line is cut: no quick check there.
        quick = anywhere is not None and not ("$" in pattern and "\r" in text)
        if quick and anywhere is not None and not anywhere.search(text):
            return
        for number, line in _lines(text):
            if len(found) >= bounds.results:
                return
            if regex.search(line):
                found.append({"path": shown, "line": number,
                              "content": files._text(line[:max_line_chars])})

    top = files._open(root, path, sysutil.O_PATH)
    try:
        is_dir = stat_mod.S_ISDIR(os.fstat(top).st_mode)
    finally:
        os.close(top)
    if not is_dir:
        fd, _ = files.open_regular(root, path)
        with contextlib.closing(_Fd(fd)):
            search(fd, files._text(path))
        return found
    for entry in _walk(root, path, exclude, bounds):
        if len(found) >= bounds.results:
            break
        if not stat_mod.S_ISREG(entry.st.st_mode) or entry.st.st_size > max_file_bytes:
            continue
        if wanted is not None and not wanted(entry.name):
            continue
        try:
            fd = os.open(entry.name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY
                         | os.O_CLOEXEC, dir_fd=entry.dirfd)
        except OSError:
            continue  # unreadable to the sandbox user, or swapped for a FIFO or symlink
        with contextlib.closing(_Fd(fd)):
            if stat_mod.S_ISREG(os.fstat(fd).st_mode):
                search(fd, files._text(posixpath.join(path, entry.rel)))
    return found


class _Fd:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        os.close(self.fd)


def _text_of(fd: int, max_bytes: int) -> str | None:
    """The file as text (bytes that are not UTF-8 kept as surrogates); None for a binary
    file or one past ``max_bytes``."""
    os.set_blocking(fd, True)
    data = os.read(fd, max_bytes + 1)
    while len(data) <= max_bytes:
        more = os.read(fd, max_bytes + 1 - len(data))
        if not more:
            break
        data += more
    if len(data) > max_bytes or b"\0" in data[:_BINARY_PROBE]:
        return None
    return data.decode("utf-8", "surrogateescape")


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """``text``'s lines, numbered from 1, without their line ends."""
    if text.endswith("\n"):
        text = text[:-1]
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.removesuffix("\r")


# --- tree -----------------------------------------------------------------------------------


def tree(root: int, path: str, exclude: Sequence[str], max_depth: int,
         bounds: Bounds) -> list[dict[str, Any]]:
    """The entries below ``path`` as nested ``{name, type, children}`` down to
    ``max_depth`` levels (1: ``path``'s own entries); a symlink is a file, never entered."""
    top: list[dict[str, Any]] = []
    children: dict[str, list[dict[str, Any]]] = {"": top}

    def descend(entry: _Entry) -> bool:
        return entry.rel.count("/") + 1 < max_depth

    if max_depth <= 0:
        os.close(files._open(root, path, os.O_RDONLY | os.O_DIRECTORY))
        return top
    for count, entry in enumerate(_walk(root, path, exclude, bounds, descend=descend), 1):
        if count > bounds.results:
            raise files.Refused("path", f"has more than {bounds.results} entries: ask for "
                                "a shallower tree, or exclude some")
        node: dict[str, Any] = {"name": files._text(entry.name), "type": "file"}
        if stat_mod.S_ISDIR(entry.st.st_mode):
            node["type"] = "directory"
            node["children"] = children[entry.rel] = []
        children[entry.rel.rpartition("/")[0]].append(node)
    return top
