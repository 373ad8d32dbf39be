"""Terminals (PTY sessions), host side: each a relay started in the sandbox, and its pipes.

A session's relay (``ptyrelay.py``) is started by the exec chain like a command
(``exec.exec_argv``), so it and the shell it starts are processes of the sandbox: its
namespaces, root, user and seccomp filter, in a child cgroup of the sandbox's own
(``t-<token>``), where the sandbox's limits hold them and the session's delete kills
exactly its process tree. The pseudo-terminal is opened there, from the sandbox's devpts.

The runner holds the relay's three pipes; the backend reads and writes them without a
thread (``input_fd`` and ``output_fd`` are non-blocking). Frames sent to the relay are at
most ``PIPE_BUF`` bytes, so one write of a frame is whole or nothing and writers never
interleave. Sessions are kept in memory: they end with the sandbox (its teardown calls
``stop``) and with the backend, whose end closes the pipes and so hangs the shells up.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import select
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pulumi_leap0 import spec
from pulumi_leap0.runner import files, seccomp, sysutil
from pulumi_leap0.runner.cgroups import Cgroups
from pulumi_leap0.runner.errors import (
    RunnerError,
    SandboxFrozenError,
    TerminalConflictError,
    TerminalInputError,
    TerminalNotFoundError,
    TerminalTimeoutError,
)
from pulumi_leap0.runner.exec import exec_argv, exec_script, kill_call
from pulumi_leap0.runner.ptyrelay import DATA, HEADER, RESIZE, SIZE
from pulumi_leap0.runner.state import Records, SandboxState, check_id
from pulumi_leap0.runner.types import check_env

CGROUP_PREFIX = "t-"
#: The interpreter the relay runs with, inside the sandbox (the template's own).
PYTHON = "/usr/bin/python3"
_RELAY_SOURCE = Path(__file__).with_name("ptyrelay.py").read_bytes()
# The relay's source arrives on a pipe of its own (fd in argv[1]), not in its argv: a short
# command line in the sandbox's ``ps``, and a pipe per session that nothing else shares.
_BOOT = ("import os, sys; fd = int(sys.argv[1]); source = os.read(fd, 1 << 20); "
         "os.close(fd); exec(compile(source, 'leap0-pty-relay', 'exec'))")
#: A frame's payload, at most: header and payload fit in one atomic pipe write.
MAX_FRAME_DATA = select.PIPE_BUF - HEADER.size
DEFAULT_TERM = "xterm-256color"


@dataclass
class Terminal:
    """One session. ``process`` is None until a lazy session's first connection."""

    sandbox_id: str
    id: str
    cwd: str
    envs: dict[str, str]
    cols: int
    rows: int
    created_at: float
    lazy_start: bool
    cgroup: str
    process: subprocess.Popen[bytes] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def active(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def open_pipes(self) -> tuple[int, int]:
        """Copies of the relay's (input, output) pipe ends, the caller's to close: the
        session's delete closes the runner's own, and a number closed under a reader could
        name another session's pipe by the time it reads."""
        with self.lock:
            if not self.active:
                raise TerminalConflictError("the session's shell has ended")
            return os.dup(self.input_fd), os.dup(self.output_fd)

    @property
    def input_fd(self) -> int:
        assert self.process is not None and self.process.stdin is not None
        return self.process.stdin.fileno()

    @property
    def output_fd(self) -> int:
        assert self.process is not None and self.process.stdout is not None
        return self.process.stdout.fileno()


def input_frames(data: bytes) -> list[bytes]:
    """Terminal input as relay frames, each one atomic pipe write."""
    return [HEADER.pack(DATA, len(part)) + part
            for part in (data[i:i + MAX_FRAME_DATA] for i in range(0, len(data), MAX_FRAME_DATA))]


def resize_frame(cols: int, rows: int) -> bytes:
    return HEADER.pack(RESIZE, SIZE.size) + SIZE.pack(cols, rows)


class Terminals:
    """Every sandbox's sessions on this runner (``Runner.terminals``), by sandbox id."""

    def __init__(self, records: Records, cgroups: Cgroups,
                 cgroup_of: Callable[[str], str]) -> None:
        self._records = records
        self._cgroups = cgroups
        self._cgroup_of = cgroup_of
        self._lock = threading.Lock()
        self._sessions: dict[str, dict[str, Terminal]] = {}

    def create(self, sandbox_id: str, session_id: str | None, *, cwd: str | None,
               envs: Mapping[str, str], cols: int, rows: int, lazy_start: bool) -> Terminal:
        """A shell on a pseudo-terminal of the sandbox, started now or, ``lazy_start``, at
        its first ``attach``."""
        box = self._records.running(sandbox_id)
        check_env(envs)
        sandbox_cgroup = self._cgroup_of(box.id)
        if self._cgroups.is_frozen(sandbox_cgroup):
            raise SandboxFrozenError("the sandbox is paused")
        workdir = files.normalize(cwd, box.workdir) if cwd else box.workdir
        terminal = Terminal(
            sandbox_id=box.id, id=session_id or f"pty-{secrets.token_hex(6)}", cwd=workdir,
            envs=dict(envs), cols=cols, rows=rows, created_at=time.time(),
            lazy_start=lazy_start,
            cgroup=f"{sandbox_cgroup}/{CGROUP_PREFIX}{secrets.token_hex(6)}",
        )
        with self._lock:
            sessions = self._sessions.setdefault(box.id, {})
            if terminal.id in sessions:
                raise TerminalConflictError("id: a session with this id already exists")
            if len(sessions) >= spec.MAX_PTY_SESSIONS:
                raise TerminalConflictError(
                    f"the sandbox already has {spec.MAX_PTY_SESSIONS} PTY sessions, "
                         "the limit: delete one first")
            sessions[terminal.id] = terminal  # holds the place while the shell starts
        if not lazy_start:
            try:
                self._start(box, terminal)
            except BaseException:
                self._forget(terminal)
                raise
        return terminal

    def attach(self, sandbox_id: str, session_id: str) -> Terminal:
        """The session, its shell started if it was lazy."""
        box = self._records.running(sandbox_id)
        terminal = self.get(sandbox_id, session_id)
        self._start(box, terminal)
        return terminal

    def _start(self, box: SandboxState, terminal: Terminal) -> None:
        """Start the session's shell, unless it runs already (a lazy one's first connect)."""
        with terminal.lock:
            if terminal.process is not None:
                return
            terminal.process = _spawn(self._cgroups, box, terminal)

    def get(self, sandbox_id: str, session_id: str) -> Terminal:
        check_id(sandbox_id)
        with self._lock:
            terminal = self._sessions.get(sandbox_id, {}).get(session_id)
        if terminal is None:
            raise TerminalNotFoundError("PTY session not found")
        return terminal

    def list(self, sandbox_id: str) -> list[Terminal]:
        check_id(sandbox_id)
        with self._lock:
            return sorted(self._sessions.get(sandbox_id, {}).values(),
                          key=lambda t: (t.created_at, t.id))

    def resize(self, sandbox_id: str, session_id: str, cols: int, rows: int) -> Terminal:
        terminal = self.get(sandbox_id, session_id)
        with terminal.lock:
            terminal.cols, terminal.rows = cols, rows
            if terminal.active:
                try:
                    os.write(terminal.input_fd, resize_frame(cols, rows))
                except BlockingIOError:
                    raise TerminalConflictError(
                        "the session is not reading input now (the sandbox is paused, "
                             "or its shell is busy): try again") from None
                except BrokenPipeError:
                    pass  # it ended meanwhile: the new size waits for nobody
        return terminal

    def delete(self, sandbox_id: str, session_id: str) -> None:
        terminal = self.get(sandbox_id, session_id)
        self._forget(terminal)
        self._end(terminal)

    def stop(self, sandbox_id: str) -> None:
        """End every session of the sandbox (its teardown). Idempotent."""
        with self._lock:
            sessions = self._sessions.pop(sandbox_id, {})
        for terminal in sessions.values():
            self._end(terminal)

    def _forget(self, terminal: Terminal) -> None:
        with self._lock:
            sessions = self._sessions.get(terminal.sandbox_id, {})
            if sessions.get(terminal.id) is terminal:
                del sessions[terminal.id]
            if not sessions:
                self._sessions.pop(terminal.sandbox_id, None)

    def _end(self, terminal: Terminal) -> None:
        with terminal.lock:
            process, terminal.process = terminal.process, None
        if process is not None:
            _kill(self._cgroups, process, terminal.cgroup)
        else:
            self._cgroups.remove_if_empty(terminal.cgroup)


def _spawn(cgroups: Cgroups, box: SandboxState, terminal: Terminal) -> subprocess.Popen[bytes]:
    env = {**box.env, "TERM": DEFAULT_TERM, **terminal.envs}
    cgroups.create(terminal.cgroup)
    source, feed = os.pipe()
    try:
        try:
            os.write(feed, _RELAY_SOURCE)  # smaller than a pipe's buffer: never blocks
        finally:
            os.close(feed)
        command = [PYTHON, "-I", "-c", _BOOT, str(source), str(terminal.cols),
                   str(terminal.rows), terminal.cwd]
        argv = exec_argv(cgroup_procs=cgroups.procs_files(terminal.cgroup),
                         init_pid=box.init_pid, uid=box.uid, gid=box.group)
        process = seccomp.popen(argv, env=sysutil.HOST_ENV, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, cwd="/", pass_fds=(source,))
        # The environment and the relay's argv go in on stdin, as for every exec
        # (``exec.exec_script``), never on a host command line; the keystrokes follow on
        # the same pipe only once the relay has said it runs.
        assert process.stdin is not None
        try:
            process.stdin.write(exec_script(env, command, "/"))
            process.stdin.flush()
        except OSError as exc:
            _kill(cgroups, process, terminal.cgroup)
            raise RunnerError(f"could not start the terminal: {exc}") from exc
    except OSError as exc:
        cgroups.remove_if_empty(terminal.cgroup)
        raise RunnerError(f"could not start the terminal: {exc}") from exc
    finally:
        os.close(source)
    try:
        status = _started(process)
    except BaseException:
        _kill(cgroups, process, terminal.cgroup)
        raise
    if status != b"R":
        _kill(cgroups, process, terminal.cgroup)
        raise _start_error(status)
    assert process.stdin is not None and process.stdout is not None
    os.set_blocking(process.stdin.fileno(), False)
    os.set_blocking(process.stdout.fileno(), False)
    return process


def _started(process: subprocess.Popen[bytes]) -> bytes:
    """What the relay said on stderr: ``R`` (running) or ``E<errno>``; it then closes it."""
    assert process.stderr is not None
    fd = process.stderr.fileno()
    status = b""
    deadline = time.monotonic() + spec.PTY_START_TIMEOUT_S
    while len(status) < 16:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TerminalTimeoutError(f"the shell did not start within "
                                     f"{spec.PTY_START_TIMEOUT_S} s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 16)
            if not chunk:
                break
            status += chunk
            if status == b"R":
                break
    process.stderr.close()
    return status


def _start_error(status: bytes) -> Exception:
    if status.startswith(b"E") and status[1:].isdigit():
        code = int(status[1:])
        if code in (errno.ENOENT, errno.ENOTDIR):
            return TerminalInputError("cwd", "no such directory in the sandbox")
        if code in (errno.EACCES, errno.EPERM):
            return TerminalInputError("cwd", "permission denied")
        if code == errno.EAGAIN:
            return TerminalConflictError("the sandbox is at its process limit")
        return TerminalConflictError(f"the shell could not start: {os.strerror(code).lower()}")
    return TerminalConflictError(
        f"the shell could not start: the template needs {PYTHON} for terminals")


def _kill(cgroups: Cgroups, process: subprocess.Popen[bytes], cgroup: str) -> None:
    """End the relay, the shell and whatever it started; the host-side ``nsenter`` is
    spared until its child is dead, so nothing is left to the host's pid 1 (as in exec)."""
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    kill_call(cgroups, process, cgroup)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5.0)
    cgroups.remove_if_empty(cgroup)
