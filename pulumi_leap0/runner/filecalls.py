"""File calls, host side: one file helper per running sandbox, and the calls it serves.

A sandbox's file calls are done by its file helper (``fileserver.py``), a process of the
sandbox in all that counts (its user namespace, user, cgroup and root, no capabilities),
started on the sandbox's first file call and kept until its teardown. The runner never
touches a sandbox's files itself: the backend's privileges never meet a sandbox path.

Each call is a stream socket handed to the helper over its control socket; one of the
helper's workers serves it and dies if it is still at it past the call's deadline, and
the runner stops waiting at the same deadline, so no call holds a backend thread longer than
``spec.FILE_CALL_TIMEOUT_S`` (``spec.FILE_TRANSFER_TIMEOUT_S`` for a call that moves
contents, the client's own pace included).
Contents stream both ways in frames (``frames.py``): the backend holds a chunk at a time.
The helper process and one call's socket to it are ``filehelper.py``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from pulumi_leap0 import spec
from pulumi_leap0.runner import files, frames
from pulumi_leap0.runner.cgroups import Cgroups
from pulumi_leap0.runner.errors import FileCallAborted, FileCallError, SandboxFrozenError
from pulumi_leap0.runner.filehelper import Call, Helper, start
from pulumi_leap0.runner.state import SandboxState
from pulumi_leap0.spec import FileInfo

#: A write this small is sent with its request, in one write the helper's socket buffer
#: takes whole, so it is never cut off by the helper's refusal to open the file.
PIPELINED_BYTES = 64 * 1024
#: The helper's cgroup below the sandbox's.
CGROUP = "files"


class FileHelpers:
    """The file helpers of one runner's sandboxes, and the calls made through them.

    ``cgroup_of`` names a sandbox's cgroup (``leap0/<scope>/<id>``)."""

    def __init__(self, cgroups: Cgroups, cgroup_of: Callable[[str], str]) -> None:
        self._cgroups = cgroups
        self._cgroup_of = cgroup_of
        self._lock = threading.Lock()
        self._helpers: dict[str, Helper] = {}
        self._starting: dict[str, threading.Lock] = {}

    # --- Calls ----------------------------------------------------------------------------

    def stat(self, box: SandboxState, path: str) -> FileInfo:
        return _file_info(self._call(box, "stat", path=path).answer())

    def exists(self, box: SandboxState, path: str) -> bool:
        return bool(self._call(box, "exists", path=path).answer())

    def list_dir(self, box: SandboxState, path: str, *, recursive: bool,
                 exclude: Iterable[str]) -> list[FileInfo]:
        items = self._call(box, "ls", path=path, recursive=recursive, exclude=_patterns(exclude),
                           max_entries=spec.MAX_LS_ENTRIES,
                           max_depth=spec.MAX_TREE_DEPTH).answer()
        return [_file_info(item) for item in items]

    def mkdir(self, box: SandboxState, path: str, *, recursive: bool, mode: int) -> None:
        self._call(box, "mkdir", path=path, recursive=recursive, mode=mode).answer()

    def delete(self, box: SandboxState, path: str, *, recursive: bool) -> None:
        self._call(box, "delete", path=path, recursive=recursive,
                   max_depth=spec.MAX_TREE_DEPTH).answer()

    def write_file(self, box: SandboxState, path: str, content: bytes | Iterable[bytes], *,
                   mode: int | None) -> None:
        """``content`` (bytes, or chunks as they come) into ``path``: the file is opened,
        and refused if it cannot be, before the first chunk is taken. Content of at most
        ``PIPELINED_BYTES`` goes with the request, saving a round trip."""
        if isinstance(content, bytes) and len(content) <= PIPELINED_BYTES:
            then = frames.encode(frames.DATA, content) + frames.encode(frames.END)
            with contextlib.closing(self._call(box, "write", spec.FILE_TRANSFER_TIMEOUT_S,
                                               then=then, path=path, mode=mode)) as call:
                call.result()
                call.result()
            return
        call = self._call(box, "write", spec.FILE_TRANSFER_TIMEOUT_S, path=path, mode=mode)
        with contextlib.closing(call):
            call.result()
            total = 0
            for chunk in [content] if isinstance(content, bytes) else content:
                total += len(chunk)
                if total > spec.MAX_WRITE_FILE_BYTES:
                    raise FileCallError("body", f"must be at most {spec.MAX_WRITE_FILE_BYTES} "
                                        "bytes")
                call.send_data(chunk)
            call.end_data()
            call.result()

    def open_file(self, box: SandboxState, path: str, *, offset: int = 0,
                  limit: int | None = None, head: int | None = None,
                  tail: int | None = None) -> FileReader:
        """``path``'s contents (see ``readwindow.read_window``), open and streaming; errors
        about the file itself are raised here, before any byte."""
        call = self._call(box, "read", spec.FILE_TRANSFER_TIMEOUT_S, path=path, offset=offset,
                          limit=limit, head=head, tail=tail,
                          max_bytes=spec.MAX_READ_FILE_BYTES)
        try:
            call.result()
        except BaseException:
            call.close()
            raise
        return FileReader(call)

    def set_permissions(self, box: SandboxState, path: str, *, mode: int | None,
                        owner: str | None, group: str | None) -> None:
        self._call(box, "set_permissions", path=path, mode=mode, owner=owner,
                   group=group).answer()

    def glob(self, box: SandboxState, path: str, pattern: str | None,
             exclude: Iterable[str]) -> list[str]:
        return [str(p) for p in self._call(
            box, "glob", spec.FILE_SEARCH_TIMEOUT_S, path=path, pattern=pattern,
            exclude=_patterns(exclude), **_walk_bounds(spec.MAX_GLOB_RESULTS)).answer()]

    def grep(self, box: SandboxState, path: str, pattern: str, *, include: str | None,
             exclude: Iterable[str]) -> list[dict[str, Any]]:
        return list(self._call(
            box, "grep", spec.FILE_SEARCH_TIMEOUT_S, path=path, pattern=pattern,
            include=include, exclude=_patterns(exclude),
            max_file_bytes=spec.MAX_GREP_FILE_BYTES, max_line_chars=spec.MAX_GREP_LINE_CHARS,
            **_walk_bounds(spec.MAX_GREP_MATCHES)).answer())

    def tree(self, box: SandboxState, path: str, *, max_depth: int,
             exclude: Iterable[str]) -> list[dict[str, Any]]:
        return list(self._call(
            box, "tree", spec.FILE_SEARCH_TIMEOUT_S, path=path, depth=max_depth,
            exclude=_patterns(exclude), **_walk_bounds(spec.MAX_LS_ENTRIES)).answer())

    def edit_file(self, box: SandboxState, path: str,
                  edits: Sequence[tuple[str, str]]) -> dict[str, Any]:
        return dict(self._call(box, "edit_file", path=path, edits=[list(e) for e in edits],
                               max_bytes=spec.MAX_EDIT_FILE_BYTES).answer())

    def edit_files(self, box: SandboxState, paths: Sequence[str], find: str,
                   replace: str) -> list[dict[str, Any]]:
        return list(self._call(box, "edit_files", paths=list(paths), find=find,
                               replace=replace, max_bytes=spec.MAX_EDIT_FILE_BYTES).answer())

    def move(self, box: SandboxState, src: str, dst: str, *, overwrite: bool) -> None:
        self._call(box, "move", path=src, dst_path=dst, overwrite=overwrite,
                   max_entries=spec.MAX_WALK_ENTRIES, max_depth=spec.MAX_TREE_DEPTH).answer()

    def copy(self, box: SandboxState, src: str, dst: str, *, recursive: bool,
             overwrite: bool) -> None:
        self._call(box, "copy", path=src, dst_path=dst, recursive=recursive,
                   overwrite=overwrite, max_entries=spec.MAX_WALK_ENTRIES,
                   max_depth=spec.MAX_TREE_DEPTH).answer()

    def write_files(self, box: SandboxState, items: Sequence[tuple[str, bytes]]) -> None:
        """All of ``items`` (path, contents) or none: each is written beside its path and
        they are renamed into place together once all are written."""
        total = sum(len(content) for _, content in items)
        if len(items) > spec.MAX_BATCH_FILES:
            raise FileCallError("files", f"must have at most {spec.MAX_BATCH_FILES} items")
        if total > spec.MAX_WRITE_FILE_BYTES:
            raise FileCallError("body", f"must be at most {spec.MAX_WRITE_FILE_BYTES} bytes")
        call = self._call(box, "write_files", spec.FILE_TRANSFER_TIMEOUT_S,
                          paths=[path for path, _ in items])
        with contextlib.closing(call):
            call.result()
            for _, content in items:
                call.send_data(content)
                call.end_data()
            call.result()

    def open_files(self, box: SandboxState, paths: Sequence[str]) -> FilesReader:
        """The files open and about to stream, one after another; errors about any of them
        (missing, not a regular file, too much in all) are raised here, before any byte."""
        if len(paths) > spec.MAX_BATCH_FILES:
            raise FileCallError("paths", f"must have at most {spec.MAX_BATCH_FILES} items")
        call = self._call(box, "read_files", spec.FILE_TRANSFER_TIMEOUT_S, paths=list(paths),
                          max_bytes=spec.MAX_READ_FILES_BYTES)
        try:
            call.result()
        except BaseException:
            call.close()
            raise
        return FilesReader(call)

    def _call(self, box: SandboxState, op: str, timeout: float | None = None,
              then: bytes = b"", **args: Any) -> Call:
        timeout = spec.FILE_CALL_TIMEOUT_S if timeout is None else timeout
        rel = self._cgroup_of(box.id)
        if self._cgroups.is_frozen(rel):
            raise SandboxFrozenError("the sandbox is paused")
        for key in ("path", "dst_path"):
            if key in args:
                args[key] = files.normalize(args[key], box.workdir)
        if "paths" in args:
            args["paths"] = [files.normalize(p, box.workdir) for p in args["paths"]]
        deadline = time.monotonic() + timeout
        for _ in range(2):  # a helper that died since its last call is replaced once
            helper = self._helper(box, rel)
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                helper.hand_over(theirs, timeout, deadline)
            except TimeoutError:
                ours.close()
                raise FileCallError("path", f"could not be served within {timeout:g} s: "
                                    "the sandbox's file calls are all busy") from None
            except OSError:
                ours.close()
                self._retire(box.id, helper)
                continue
            finally:
                theirs.close()
            call = Call(ours, deadline, timeout)
            try:
                call.request({"op": op, **args}, then)
            except BaseException:
                call.close()
                raise
            return call
        raise FileCallAborted("the sandbox's file helper keeps ending: is the sandbox out of "
                              "memory or processes?")

    # --- Helpers --------------------------------------------------------------------------

    def _helper(self, box: SandboxState, rel: str) -> Helper:
        init = (box.init_pid, box.init_start)
        with self._lock:
            helper = self._helpers.get(box.id)
            if helper is not None and helper.serves(init):
                return helper
            starting = self._starting.setdefault(box.id, threading.Lock())
        with starting:  # one start per sandbox at a time; other sandboxes go on meanwhile
            with self._lock:
                helper = self._helpers.get(box.id)
            if helper is not None:
                if helper.serves(init):
                    return helper
                self._retire(box.id, helper)
            helper = start(self._cgroups, box, f"{rel}/{CGROUP}")
            with self._lock:
                self._helpers[box.id] = helper
            return helper

    def _retire(self, sandbox_id: str, helper: Helper) -> None:
        with self._lock:
            if self._helpers.get(sandbox_id) is helper:
                del self._helpers[sandbox_id]
        helper.kill()

    def stop(self, sandbox_id: str) -> None:
        """Kill the sandbox's helper, if it has one (its calls' children die with the
        sandbox's cgroup, or at their deadline). Idempotent."""
        with self._lock:
            helper = self._helpers.pop(sandbox_id, None)
            self._starting.pop(sandbox_id, None)
        if helper is not None:
            helper.kill()


class FileReader:
    """A read in progress: ``prefetch`` what comes at once, then ``read`` chunk by chunk
    (``b""`` at the end), and ``close``; iterating reads it all."""

    def __init__(self, call: Call) -> None:
        self._call = call
        self.buffered: list[bytes] = []
        self.complete = False

    def prefetch(self, max_bytes: int) -> None:
        """Read ahead up to ``max_bytes``, so a small file needs no further wait."""
        total = sum(len(b) for b in self.buffered)
        while not self.complete and total < max_bytes:
            chunk = self.read()
            if chunk:
                self.buffered.append(chunk)
                total += len(chunk)

    def read(self) -> bytes:
        if self.complete:
            return b""
        chunk = self._call.data()
        if not chunk:
            self.complete = True
            self.close()
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        try:
            while self.buffered:
                yield self.buffered.pop(0)
            while chunk := self.read():
                yield chunk
        finally:
            self.close()

    def close(self) -> None:
        self._call.close()


class FilesReader:
    """A ``read-files`` in progress: ``read`` gives each file's chunks, then ``b""`` at the
    end of that file; ``close`` when done."""

    def __init__(self, call: Call) -> None:
        self._call = call

    def read(self) -> bytes:
        return self._call.data()

    def close(self) -> None:
        self._call.close()


def _patterns(exclude: Iterable[str]) -> list[str]:
    patterns = list(exclude)
    if len(patterns) > spec.MAX_LS_EXCLUDE:
        raise FileCallError("exclude", f"must have at most {spec.MAX_LS_EXCLUDE} items")
    return patterns


def _walk_bounds(results: int) -> dict[str, Any]:
    return {"max_entries": spec.MAX_WALK_ENTRIES, "max_depth": spec.MAX_TREE_DEPTH,
            "max_results": results}


def _file_info(item: dict[str, Any]) -> FileInfo:
    return FileInfo(**item)
