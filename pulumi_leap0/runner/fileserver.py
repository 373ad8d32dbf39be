"""A sandbox's file helper: the process that serves its file calls, as one of its own.

Started by the runner (``filehelper.py``) as root on the host, with its control socket as
stdin, it waits, imports done, to be told which sandbox it serves. Then, in this order:

1. it opens the sandbox init's root (``/proc/<init>/root``) and user namespace, and checks
   that the init's start time is still the one the runner recorded, so the fds cannot be
   of a process that took over a reused pid;
2. it joins the sandbox's ``files`` cgroup: the memory, page cache and tmpfs pages of every
   call, and its CPU, count against the sandbox's limits; pausing the sandbox pauses it
   and a sandbox's teardown kills it with the rest;
3. it drops every supplementary group, joins the sandbox's user namespace, becomes the
   sandbox user (uid and gid inside), chroots into the sandbox's root, and drops every
   capability (``sysutil.drop_capabilities``), then checks that none is left;
4. it answers ``{"ready": true}`` and serves: each call arrives as a stream socket (an fd
   over the control socket), taken by one of a few forked workers (``_serve``), so calls
   run side by side, a stuck one hurts nobody else, and a worker dies (``alarm``) at its
   call's deadline.

It ends when the runner closes the control socket (the backend stopped, or the sandbox is
torn down). Its workers are never the sandbox's to signal: they are outside its pid
namespace and not dumpable. This runs outside the sandbox's mount namespace with the host's
interpreter, so a template without Python (container images) is served all the same.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pulumi_leap0.runner import fileops, files, filesearch, frames, readwindow, sysutil

#: Workers waiting for a call, and workers in all (more calls at once queue for the next).
MIN_IDLE, MAX_WORKERS = 1, 16
#: A worker ends after this long without a call, after this many calls, or once its
#: memory (all the sandbox's to pay) has grown past this.
IDLE_S, MAX_CALLS, MAX_RSS_KIB = 60, 10_000, 256 * 1024
# What a worker tells the server: "B" (took a call) or "I" (idle again), and its pid.
_STATUS = struct.Struct("=ci")


class _Unready(Exception):
    pass


def main() -> None:
    control = socket.socket(fileno=0)
    raw = control.recv(65536)
    if not raw:
        return  # an unused spare whose runner went away
    try:
        root, names = _become(json.loads(raw))
    except (_Unready, OSError, ValueError, KeyError) as exc:
        with contextlib.suppress(OSError):
            control.send(json.dumps({"error": str(exc)}).encode())
        sys.exit(1)
    control.send(b'{"ready": true}')
    _serve(control, root, names)


def _become(assignment: dict[str, Any]) -> tuple[int, files.Names]:
    pid, start = int(assignment["init_pid"]), int(assignment["init_start"])
    uid, gid = int(assignment["uid"]), int(assignment["gid"])
    root = os.open(f"/proc/{pid}/root", sysutil.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    userns = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    if sysutil.process_start_time(pid) != start:
        raise _Unready("the sandbox is not running")
    for procs in assignment["cgroup_procs"]:
        with open(procs, "w", encoding="ascii") as fh:
            fh.write(str(os.getpid()))
    status = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)  # read after the chroot
    os.umask(0o022)
    if os.geteuid() == 0:
        os.setgroups([])  # inside, setgroups is denied (bubblewrap): drop them here
    sysutil.setns(userns, sysutil.CLONE_NEWUSER)
    os.close(userns)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    # The chroot makes a stray absolute path land in the sandbox too, never on the host;
    # openat2 on the root fd is what resolves call paths.
    os.fchdir(root)
    os.chroot(".")
    sysutil.drop_capabilities()
    text = os.pread(status, 8192, 0).decode("ascii", "replace")
    os.close(status)
    held = [ln for ln in text.splitlines()
            if ln.startswith(("CapEff:", "CapPrm:")) and int(ln.split()[1], 16)]
    if held:
        raise _Unready(f"capabilities left: {held}")
    return root, files.Names.of_root(root)


def _serve(control: socket.socket, root: int, names: files.Names) -> None:
    """Keep ``MIN_IDLE`` workers waiting for calls, at most ``MAX_WORKERS`` in all, until the
    runner closes the control socket. Workers are forked here but forking is never on a
    call's path: a worker takes a call from the control socket itself and says so, and
    the next idle one is forked meanwhile (a fork costs milliseconds on a VM)."""
    status_r, status_w = os.pipe()
    workers: dict[int, _Worker] = {}
    poller = select.poll()
    poller.register(control.fileno(), 0)  # only hang-up: the workers read the messages
    poller.register(status_r, select.POLLIN)

    def fill() -> bool:
        """Fork the workers missing; False when the sandbox's process limit stopped it."""
        while (sum(not w.busy for w in workers.values()) < MIN_IDLE
               and len(workers) < MAX_WORKERS):
            try:
                pid = os.fork()
            except BlockingIOError:  # EAGAIN: the sandbox's pids limit; calls wait
                return False
            if pid == 0:
                code = 1
                try:
                    os.close(status_r)
                    _work(control, status_w, root, names)
                    code = 0
                finally:
                    os._exit(code)
            worker = _Worker(pid, os.pidfd_open(pid))
            workers[pid] = worker
            poller.register(worker.pidfd, select.POLLIN)
        return True

    filled = fill()
    while True:
        # No worker to take a call and none to be forked (the sandbox is at its process
        # limit): turn calls away here at once rather than let them wait for their deadline.
        starved = not filled and all(w.busy for w in workers.values())
        poller.modify(control.fileno(), select.POLLIN if starved else 0)
        for fd, events in poller.poll(None if filled else 1000):  # short of workers: retry
            if fd == control.fileno():
                if events & (select.POLLHUP | select.POLLERR):
                    return  # the runner is gone; busy workers finish their call and end
                _turn_away(control)
                continue
            if fd == status_r:
                for kind, pid in _STATUS.iter_unpack(os.read(status_r, 64 * _STATUS.size)):
                    if pid in workers:
                        workers[pid].busy = kind == b"B"
                continue
            ended = next(w for w in workers.values() if w.pidfd == fd)
            poller.unregister(fd)
            os.close(fd)
            os.waitpid(ended.pid, 0)
            del workers[ended.pid]
        filled = fill()


def _turn_away(control: socket.socket) -> None:
    try:
        _, fds, _, _ = socket.recv_fds(control, 4096, 1, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return  # a worker freed up and took it
    for fd in fds:
        with socket.socket(fileno=fd) as sock:
            _refuse(sock, BlockingIOError(errno.EAGAIN, "no process left for the call"))


@dataclass
class _Worker:
    pid: int
    pidfd: int
    busy: bool = False


def _work(control: socket.socket, status: int, root: int, names: files.Names) -> None:
    """One worker: calls one at a time, each bounded by ``alarm`` at its deadline (SIGALRM
    ends the worker, whatever it was blocked in). It ends when idle for ``IDLE_S``, after
    ``MAX_CALLS`` calls, or when its memory has grown past ``MAX_RSS_KIB``."""
    me = os.getpid()
    waiting = select.poll()
    waiting.register(control.fileno(), select.POLLIN)
    for _ in range(MAX_CALLS):
        if not waiting.poll(IDLE_S * 1000):
            return
        message, fds, _, _ = socket.recv_fds(control, 4096, 1)
        if not message and not fds:
            return  # the runner is gone
        for extra in fds[1:]:
            os.close(extra)
        if not fds:
            continue
        os.write(status, _STATUS.pack(b"B", me))
        with socket.socket(fileno=fds[0]) as sock:
            try:
                timeout = float(json.loads(message)["timeout"])
            except (ValueError, KeyError) as exc:
                _refuse(sock, exc)
                continue
            signal.alarm(max(1, math.ceil(timeout)) + 1)  # the runner gives up first
            _call(sock, root, names, time.monotonic() + timeout)
            signal.alarm(0)
        os.write(status, _STATUS.pack(b"I", me))
        if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > MAX_RSS_KIB:
            return


def _refuse(sock: socket.socket, exc: Exception) -> None:
    with contextlib.suppress(OSError):
        frames.send_json(sock, frames.RESULT, {"error": _error(exc)})


def _error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, files.Refused):
        return {"field": exc.field, "message": exc.message}
    if isinstance(exc, files.Failed):
        return {"errno": exc.errno, "message": os.strerror(exc.errno), "field": exc.field}
    if isinstance(exc, OSError) and exc.errno:
        return {"errno": exc.errno, "message": os.strerror(exc.errno)}
    return {"message": "internal error in the file helper"}


# --- One call -------------------------------------------------------------------------------


def _call(sock: socket.socket, root: int, names: files.Names, deadline: float) -> None:
    try:
        kind, payload = frames.recv(sock)
        if kind != frames.REQUEST:
            return
        request = json.loads(payload)
        request["deadline"] = deadline  # the worker's own clock: the runner's is not ours
        serve = _SERVERS.get(request.get("op"), _unknown)
        serve(sock, root, names, request)
    except (frames.ConnectionEnded, BrokenPipeError, ConnectionResetError):
        return  # the runner gave up on this call
    except Exception as exc:  # every error is the caller's answer, in the frame
        with contextlib.suppress(OSError):
            frames.send_json(sock, frames.RESULT, {"error": _error(exc)})


def _answer(sock: socket.socket, value: Any) -> None:
    frames.send_json(sock, frames.RESULT, {"ok": value})


def _unknown(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    raise ValueError("unknown file call")


def _stat(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    _answer(sock, files.stat(root, names, r["path"]))


def _exists(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    _answer(sock, files.exists(root, names, r["path"]))


def _ls(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    _answer(sock, files.list_dir(root, names, r["path"], recursive=bool(r["recursive"]),
                                 exclude=list(r["exclude"]), max_entries=int(r["max_entries"]),
                                 max_depth=int(r["max_depth"])))


def _mkdir(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    files.mkdir(root, r["path"], recursive=bool(r["recursive"]), mode=int(r["mode"]))
    _answer(sock, None)


def _delete(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    files.delete(root, r["path"], recursive=bool(r["recursive"]), max_depth=int(r["max_depth"]))
    _answer(sock, None)


def _read(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    fd, st = files.open_regular(root, r["path"])
    try:
        chunks = readwindow.read_window(fd, st.st_size, offset=int(r["offset"]), limit=r["limit"],
                                   head=r["head"], tail=r["tail"],
                                   max_bytes=int(r["max_bytes"]))
        # Refusals (too large) come before the answer starts; a file of one chunk goes out
        # with it in one send, so a small read is one wake-up of the runner, not three.
        first = next(chunks, None)
        second = None if first is None else next(chunks, None)
        opening = frames.encode_json(frames.RESULT, {"ok": {"size": st.st_size}})
        if first is not None:
            opening += frames.encode(frames.DATA, first)
        if second is None:
            sock.sendall(opening + frames.encode(frames.END))
            return
        sock.sendall(opening)
        frames.send(sock, frames.DATA, second)
        for chunk in chunks:
            frames.send(sock, frames.DATA, chunk)
        frames.send(sock, frames.END)
    finally:
        os.close(fd)


def _write(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    mode = r["mode"]
    try:
        fd = files.open_for_write(root, r["path"], None if mode is None else int(mode))
    except Exception as exc:
        frames.send_json(sock, frames.RESULT, {"error": _error(exc)})
        _drain(sock)  # a small write comes with its request
        return
    try:
        _answer(sock, None)
        failed = _receive(sock, partial(files.write_all, fd), OSError)
    finally:
        os.close(fd)
    if failed is not None:
        raise failed
    _answer(sock, None)


def _receive(sock: socket.socket, write: Callable[[bytes], None], catch: type[Exception],
             failed: Exception | None = None) -> Exception | None:
    """One file's ``DATA`` frames up to its ``END``, each given to ``write`` until a call
    fails (``catch``), or from the start when the call ``failed`` already. The frames after a
    failure are read anyway, so the runner finishes sending and then hears why: returns the
    failure."""
    while True:
        kind, payload = frames.recv(sock)
        if kind == frames.END:
            return failed
        if kind != frames.DATA:
            raise ValueError("a write takes data frames")
        if failed is None:
            try:
                write(payload)
            except catch as exc:
                failed = exc


def _drain(sock: socket.socket) -> None:
    """Take what the runner already sent after a refused request (a socket closed on unread
    data resets, and the answer could be lost)."""
    with contextlib.suppress(frames.ConnectionEnded, OSError, ValueError):
        while frames.recv(sock)[0] != frames.END:
            pass


def _bounds(r: dict[str, Any]) -> filesearch.Bounds:
    return filesearch.Bounds(entries=int(r["max_entries"]), depth=int(r["max_depth"]),
                             results=int(r["max_results"]), deadline=float(r["deadline"]))


def _set_permissions(sock: socket.socket, root: int, names: files.Names,
                     r: dict[str, Any]) -> None:
    mode = r["mode"]
    fileops.set_permissions(root, names, r["path"], mode=None if mode is None else int(mode),
                            owner=r["owner"], group=r["group"])
    _answer(sock, None)


def _glob(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    _answer(sock, filesearch.glob(root, r["path"], r["pattern"], list(r["exclude"]),
                                  _bounds(r)))


def _grep(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    _answer(sock, filesearch.grep(root, r["path"], str(r["pattern"]), r["include"],
                                  list(r["exclude"]), _bounds(r),
                                  max_file_bytes=int(r["max_file_bytes"]),
                                  max_line_chars=int(r["max_line_chars"])))


def _tree(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    _answer(sock, filesearch.tree(root, r["path"], list(r["exclude"]), int(r["depth"]),
                                  _bounds(r)))


def _edit_file(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    edits = [(str(find), str(replace)) for find, replace in r["edits"]]
    _answer(sock, fileops.edit_file(root, r["path"], edits, max_bytes=int(r["max_bytes"])))


def _edit_files(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    _answer(sock, fileops.edit_files(root, list(r["paths"]), str(r["find"]), str(r["replace"]),
                                     max_bytes=int(r["max_bytes"])))


def _move(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    fileops.move(root, r["path"], r["dst_path"], overwrite=bool(r["overwrite"]),
                 deadline=float(r["deadline"]), max_entries=int(r["max_entries"]),
                 max_depth=int(r["max_depth"]))
    _answer(sock, None)


def _copy(sock: socket.socket, root: int, names: files.Names, r: dict[str, Any]) -> None:
    fileops.copy(root, r["path"], r["dst_path"], recursive=bool(r["recursive"]),
                 overwrite=bool(r["overwrite"]), deadline=float(r["deadline"]),
                 max_entries=int(r["max_entries"]), max_depth=int(r["max_depth"]))
    _answer(sock, None)


def _write_files(sock: socket.socket, root: int, names: files.Names,
                 r: dict[str, Any]) -> None:
    """Every file staged (or the batch refused, naming the file) before the runner sends a
    byte; then each file's ``DATA`` frames and an ``END``; then all renamed into place."""
    staged: list[fileops.Staged] = []
    try:
        try:
            for index, path in enumerate(r["paths"]):
                with files.blame(f"files[{index}]"):
                    staged.append(fileops.stage(root, path))
        except Exception as exc:
            frames.send_json(sock, frames.RESULT, {"error": _error(exc)})
            _drain(sock)
            return
        _answer(sock, None)
        failed: Exception | None = None
        for index, item in enumerate(staged):
            failed = _receive(sock, partial(_write_staged, item, f"files[{index}]"),
                              files.Failed, failed)
        if failed is not None:
            raise failed
        fileops.commit(staged)
        _answer(sock, None)
    finally:
        for item in staged:
            item.discard()


def _write_staged(item: fileops.Staged, field: str, payload: bytes) -> None:
    with files.blame(field):
        item.write(payload)


def _read_files(sock: socket.socket, root: int, names: files.Names,
                r: dict[str, Any]) -> None:
    """Every file opened (or the batch refused, naming the path) and their sizes added up
    before the first byte; then each file's ``DATA`` frames and an ``END``."""
    opened: list[int] = []
    try:
        total, max_bytes = 0, int(r["max_bytes"])
        for index, path in enumerate(r["paths"]):
            with files.blame(f"paths[{index}]"):
                fd, st = files.open_regular(root, path)
            opened.append(fd)
            total += st.st_size
        if total > max_bytes:
            raise files.Refused("paths", f"hold more than {max_bytes} bytes together: read "
                                "fewer at a time")
        _answer(sock, None)
        left = max_bytes
        for index, fd in enumerate(opened):
            with files.blame(f"paths[{index}]"):
                chunks = readwindow.read_window(fd, os.fstat(fd).st_size, offset=0, limit=None,
                                           head=None, tail=None, max_bytes=left)
                for chunk in chunks:
                    left -= len(chunk)
                    frames.send(sock, frames.DATA, chunk)
            frames.send(sock, frames.END)
    finally:
        for fd in opened:
            os.close(fd)


_SERVERS: dict[str, Callable[[socket.socket, int, files.Names, dict[str, Any]], None]] = {
    "stat": _stat,
    "exists": _exists,
    "ls": _ls,
    "mkdir": _mkdir,
    "delete": _delete,
    "read": _read,
    "write": _write,
    "set_permissions": _set_permissions,
    "glob": _glob,
    "grep": _grep,
    "tree": _tree,
    "edit_file": _edit_file,
    "edit_files": _edit_files,
    "move": _move,
    "copy": _copy,
    "write_files": _write_files,
    "read_files": _read_files,
}

if __name__ == "__main__":
    main()
