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

Starting an interpreter costs tens of milliseconds, so like the egress filter the runner
keeps one spare helper started, imports done, waiting to be told its sandbox: a sandbox's
first file call then costs about a millisecond more than the next ones.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pulumi_leap0
from pulumi_leap0 import spec
from pulumi_leap0.runner import files, frames, seccomp, sysutil
from pulumi_leap0.runner.cgroups import Cgroups
from pulumi_leap0.runner.errors import (
    FileCallAborted,
    FileCallError,
    FileCallOSError,
    RunnerError,
    SandboxFrozenError,
)
from pulumi_leap0.runner.state import SandboxState
from pulumi_leap0.runner.types import FileInfo

HELPER_START_TIMEOUT_S = 10.0
#: A write this small is sent with its request, in one write the helper's socket buffer
#: takes whole, so it is never cut off by the helper's refusal to open the file.
PIPELINED_BYTES = 64 * 1024
#: The helper's cgroup below the sandbox's.
CGROUP = "files"
# The helper runs this package's code from where this process found it (not whatever an
# isolated interpreter would find first), so runner and helper never differ in version.
_PACKAGE_ROOT = str(Path(pulumi_leap0.__file__).resolve().parent.parent)
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from pulumi_leap0.runner.fileserver import main; main()")


class FileHelpers:
    """The file helpers of one runner's sandboxes, and the calls made through them.

    ``cgroup_of`` names a sandbox's cgroup (``leap0/<scope>/<id>``)."""

    def __init__(self, cgroups: Cgroups, cgroup_of: Callable[[str], str]) -> None:
        self._cgroups = cgroups
        self._cgroup_of = cgroup_of
        self._lock = threading.Lock()
        self._helpers: dict[str, _Helper] = {}
        self._starting: dict[str, threading.Lock] = {}

    # --- Calls ----------------------------------------------------------------------------

    def stat(self, box: SandboxState, path: str) -> FileInfo:
        return _file_info(self._call(box, "stat", path=path).answer())

    def exists(self, box: SandboxState, path: str) -> bool:
        return bool(self._call(box, "exists", path=path).answer())

    def list_dir(self, box: SandboxState, path: str, *, recursive: bool,
                 exclude: Iterable[str]) -> list[FileInfo]:
        patterns = list(exclude)
        if len(patterns) > spec.MAX_LS_EXCLUDE:
            raise FileCallError("exclude", f"must have at most {spec.MAX_LS_EXCLUDE} items")
        items = self._call(box, "ls", path=path, recursive=recursive, exclude=patterns,
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
        """``path``'s contents (see ``files.read_window``), open and streaming; errors
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

    def _helper(self, box: SandboxState, rel: str) -> _Helper:
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
            helper = _start(self._cgroups, box, f"{rel}/{CGROUP}")
            with self._lock:
                self._helpers[box.id] = helper
            return helper

    def _retire(self, sandbox_id: str, helper: _Helper) -> None:
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


@dataclass
class _Helper:
    process: subprocess.Popen[bytes]
    control: socket.socket
    init: tuple[int, int]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def serves(self, init: tuple[int, int]) -> bool:
        return self.init == init and self.process.poll() is None

    def hand_over(self, sock: socket.socket, timeout: float, deadline: float) -> None:
        """Queue the call for the helper's next free worker; ``TimeoutError`` when the
        queue stays full (every worker busy) past the deadline."""
        message = json.dumps({"timeout": timeout}).encode()
        if not self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError
        try:
            self.control.settimeout(max(0.001, deadline - time.monotonic()))
            socket.send_fds(self.control, [message], [sock.fileno()])
        finally:
            self.lock.release()

    def kill(self) -> None:
        self.control.close()
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()  # our unreaped child: the pid cannot name anyone else
        _reap_later(self.process)


def _start(cgroups: Cgroups, box: SandboxState, rel: str) -> _Helper:
    cgroups.create(rel)
    process, control = _take()
    assignment = {"init_pid": box.init_pid, "init_start": box.init_start, "uid": box.uid,
                  "gid": box.group, "cgroup_procs": [str(p) for p in cgroups.procs_files(rel)]}
    helper = _Helper(process, control, (box.init_pid, box.init_start))
    try:
        control.settimeout(HELPER_START_TIMEOUT_S)
        control.send(json.dumps(assignment).encode())
        reply = json.loads(control.recv(4096) or b'{"error": "it exited"}')
        control.settimeout(None)
    except (OSError, ValueError) as exc:
        reply = {"error": str(exc) or type(exc).__name__}
    if reply.get("ready") is not True:
        helper.kill()
        raise RunnerError(f"the sandbox's file helper did not start: {reply.get('error')}")
    return helper


# --- One call -------------------------------------------------------------------------------


class Call:
    """One file call's socket, until its deadline."""

    def __init__(self, sock: socket.socket, deadline: float, timeout: float) -> None:
        self._sock = sock
        self._deadline = deadline
        self._timeout = timeout

    def request(self, body: dict[str, Any], then: bytes = b"") -> None:
        """Send the request, and ``then`` (frames that follow it) in the same write."""
        message = frames.encode_json(frames.REQUEST, body) + then
        self._io(lambda: self._sock.sendall(message))

    def result(self) -> Any:
        kind, payload = self._recv()
        if kind != frames.RESULT:
            raise RunnerError("the file helper answered out of turn")
        return _outcome(payload)

    def answer(self) -> Any:
        with contextlib.closing(self):
            return self.result()

    def data(self) -> bytes:
        """The next chunk of a read; ``b""`` at its end."""
        kind, payload = self._recv()
        if kind == frames.DATA:
            return payload
        if kind == frames.END:
            return b""
        if kind == frames.RESULT:
            _outcome(payload)  # the error that cut the read short
        raise RunnerError("the file helper answered out of turn")

    def send_data(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        for start in range(0, len(view), files.CHUNK):
            self._io(partial(frames.send, self._sock, frames.DATA, view[start:start + files.CHUNK]))

    def end_data(self) -> None:
        self._io(lambda: frames.send(self._sock, frames.END))

    def close(self) -> None:
        self._sock.close()

    def _recv(self) -> tuple[bytes, bytes]:
        received: list[tuple[bytes, bytes]] = []
        self._io(lambda: received.append(frames.recv(self._sock)))
        return received[0]

    def _io(self, step: Callable[[], None]) -> None:
        left = self._deadline - time.monotonic()
        try:
            if left <= 0:
                raise TimeoutError
            self._sock.settimeout(left)
            step()
        except TimeoutError:
            raise FileCallError("path", f"took longer than {self._timeout:g} s to serve, "
                                "so the call was stopped") from None
        except (frames.ConnectionEnded, OSError):
            raise FileCallAborted("the file call ended before it answered: is the sandbox "
                                  "out of memory or processes?") from None
        except ValueError:
            raise RunnerError("the file helper broke the protocol") from None


def _outcome(payload: bytes) -> Any:
    try:
        message = json.loads(payload)
    except ValueError:
        raise RunnerError("the file helper broke the protocol") from None
    if "ok" in message:
        return message["ok"]
    error = message.get("error") or {}
    if isinstance(error.get("errno"), int):
        if isinstance(error.get("field"), str):
            raise FileCallOSError(error["errno"], str(error.get("message", "")), error["field"])
        raise OSError(error["errno"], str(error.get("message", "")))
    if isinstance(error.get("field"), str):
        raise FileCallError(error["field"], str(error.get("message", "is invalid")))
    raise RunnerError("the file helper failed")


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


# --- Spare helpers --------------------------------------------------------------------------

_spare_lock = threading.Lock()
_spare: tuple[subprocess.Popen[bytes], socket.socket] | None = None
_dying: list[subprocess.Popen[bytes]] = []


def _take() -> tuple[subprocess.Popen[bytes], socket.socket]:
    """A helper with its imports done, waiting for its sandbox; the next one is started in
    the background. An unused spare ends by itself when this process does."""
    global _spare
    with _spare_lock:
        taken = _spare if _spare is not None and _spare[0].poll() is None else None
        _spare = None
    threading.Thread(target=_refill, name="leap0-file-helper-spare", daemon=True).start()
    return taken or _spawn()


def _refill() -> None:
    global _spare
    fresh = _spawn()
    with _spare_lock:
        if _spare is None:
            _spare = fresh
            return
    fresh[1].close()  # another refill won: this one ends on the closed socket
    _reap_later(fresh[0])


def _spawn() -> tuple[subprocess.Popen[bytes], socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        # Under the sandboxes' seccomp filter from its first instruction, like every
        # process of a sandbox (``seccomp.popen``).
        process = seccomp.popen(
            [sys.executable, "-I", "-c", _BOOT, _PACKAGE_ROOT], stdin=theirs.fileno(),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
            env=sysutil.HOST_ENV, start_new_session=True,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return process, ours


def _reap_later(process: subprocess.Popen[bytes]) -> None:
    """Keep a killed helper until it is reaped (no zombie, no pid we could confuse)."""
    with _spare_lock:
        _dying.append(process)
        _dying[:] = [p for p in _dying if p.poll() is None]
