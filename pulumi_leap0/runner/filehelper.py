"""A sandbox's file helper, host side: the process, and one call's socket to it.

``filecalls.py`` keeps one helper per running sandbox and makes the calls; this module is
what it makes them with: ``start`` (a spare helper, imports done, told its sandbox),
``Helper.hand_over`` (a call's socket to the helper's next free worker), ``Helper.kill``,
and ``Call``, the framed request and answers of one call, each step bounded by the call's
deadline.

Starting an interpreter costs tens of milliseconds, so like the egress filter the runner
keeps one spare helper started, waiting to be told its sandbox: a sandbox's first file
call then costs about a millisecond more than the next ones.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pulumi_leap0
from pulumi_leap0.runner import files, frames, seccomp, sysutil
from pulumi_leap0.runner.cgroups import Cgroups
from pulumi_leap0.runner.errors import (
    FileCallAborted,
    FileCallError,
    FileCallOSError,
    RunnerError,
)
from pulumi_leap0.runner.state import SandboxState

HELPER_START_TIMEOUT_S = 10.0
# The helper runs this package's code from where this process found it (not whatever an
# isolated interpreter would find first), so runner and helper never differ in version.
_PACKAGE_ROOT = str(Path(pulumi_leap0.__file__).resolve().parent.parent)
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from pulumi_leap0.runner.fileserver import main; main()")


@dataclass
class Helper:
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


def start(cgroups: Cgroups, box: SandboxState, rel: str) -> Helper:
    cgroups.create(rel)
    process, control = _take()
    assignment = {"init_pid": box.init_pid, "init_start": box.init_start, "uid": box.uid,
                  "gid": box.group, "cgroup_procs": [str(p) for p in cgroups.procs_files(rel)]}
    helper = Helper(process, control, (box.init_pid, box.init_start))
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
