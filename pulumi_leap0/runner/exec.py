"""Running one command in a running sandbox (``Runner.exec``).

The command is a chain like the init's (``launch.py``): ``sh`` joins a fresh child cgroup
of the sandbox's, ``x-<token>``, so a timeout can kill exactly this call's process tree
however it forked or daemonized, while the sandbox's limits and freezer hold it too; then
``nsenter`` enters every namespace of the sandbox's init and its root as the sandbox user,
and starts a shell there. The chain starts under the sandbox's seccomp filter
(``seccomp.popen``): nothing of the init's filter carries over to a process that
``nsenter`` starts from the host.

The environment does not go on any command line: every host user reads every process's
argv (``/proc/PID/cmdline``), and the chain's first two links run on the host. That shell
reads its script from its stdin, a pipe only this process holds (``exec_script``): it
drops the host's variables, enters the working directory, exports each variable as
``export NAME='value'``, then becomes ``/bin/sh -c COMMAND`` with stdin on ``/dev/null``.
Not the chain's own environment instead: its first links are host programs run as root,
and a tenant's ``LD_PRELOAD`` or ``GLIBC_TUNABLES`` would reach them.
A process's environment (``/proc/PID/environ``) is readable only by its own uid and root.

Each call's cgroup is its own until the call ends: ``_live`` keeps the sweep of finished
calls' cgroups (they outlive a call whose command left a process behind) away from the
cgroup of a call that has not joined it yet.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from pulumi_leap0.runner import files, launch, seccomp, sysutil
from pulumi_leap0.runner.cgroups import Cgroups
from pulumi_leap0.runner.errors import RunnerError, SandboxFrozenError
from pulumi_leap0.runner.state import SandboxState
from pulumi_leap0.runner.types import ExecResult, check_env

DEFAULT_EXEC_TIMEOUT_S = 30.0
MAX_OUTPUT_BYTES = 16 * 1024 * 1024
EXIT_TIMED_OUT = 124
# How long exec keeps reading output after the command exited, for data still in flight
# from background processes that inherited stdout; they do not hold the call open longer.
OUTPUT_GRACE_S = 0.05
CALL_PREFIX = "x-"


_live: set[str] = set()
_live_lock = threading.Lock()


def exec_argv(*, cgroup_procs: list[Path], init_pid: int, uid: int,
              gid: int | None = None) -> list[str]:
    """Nothing of the call's own: its directory, environment and command come on stdin."""
    return [*launch.join_cgroups(cgroup_procs),
            "nsenter", f"--target={init_pid}", "--user", "--mount", "--uts", "--ipc",
            "--net", "--pid", "--cgroup", "--root", "--wd",
            f"--setuid={uid}", f"--setgid={uid if gid is None else gid}", "--",
            "/bin/sh", "-s"]


def exec_script(env: Mapping[str, str], command: str | Sequence[str], workdir: str) -> bytes:
    """What the chain's last shell reads. It drops what it got from the host (the chain's
    ``sysutil.HOST_ENV``), so the command's own shell gets exactly the exported variables,
    as ``env -i --chdir=WD NAME=value sh -c`` gave it (125 is env's code for a directory
    it cannot enter). Names are shell names (``check_env``), values single-quoted, so
    nothing in them is expanded. ``command`` is a shell command, or a program's argv: a
    program that goes on reading the chain's stdin once the shell has exec'd it (a
    terminal's relay), so the caller writes nothing more before the program says it runs."""
    lines = [f"unset {' '.join(sysutil.HOST_ENV)}",
             f"cd -- {shlex.quote(workdir)} || exit 125", "unset OLDPWD"]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    # Stdin is redirected on the last line itself: the shell reads its script from stdin
    # a buffer at a time, so an earlier redirection would cut off what it had not read.
    if isinstance(command, str):
        lines += [f"exec /bin/sh -c {shlex.quote(command)} </dev/null", ""]
    else:
        lines += ["exec " + " ".join(shlex.quote(arg) for arg in command), ""]
    return "\n".join(lines).encode()


def run_command(cgroups: Cgroups, sandbox_cgroup: str, box: SandboxState,
                command: str | Sequence[str], *, cwd: str | None,
                env: Mapping[str, str] | None, timeout: float | None,
                pass_fds: Sequence[int] = (),
                max_output: int = MAX_OUTPUT_BYTES) -> ExecResult:
    """``pass_fds``: descriptors the command inherits (a git call's credentials come on
    one); ``max_output``: bytes kept of stdout and of stderr each."""
    if cgroups.is_frozen(sandbox_cgroup):
        raise SandboxFrozenError("the sandbox is paused")
    check_env(env or {})
    merged = {**box.env, **(env or {})}
    workdir = files.normalize(cwd, box.workdir) if cwd else box.workdir
    call = f"{sandbox_cgroup}/{CALL_PREFIX}{secrets.token_hex(6)}"
    with _live_lock:
        _live.add(call)
    try:
        _remove_finished_calls(cgroups, sandbox_cgroup)
        cgroups.create(call)
        argv = exec_argv(cgroup_procs=cgroups.procs_files(call), init_pid=box.init_pid,
                         uid=box.uid, gid=box.group)
        try:
            proc = seccomp.popen(argv, env=sysutil.HOST_ENV, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 start_new_session=True, cwd="/", pass_fds=tuple(pass_fds))
        except OSError as exc:
            raise RunnerError(f"could not run the command: {exc}") from exc
        out, err, timed_out = _collect(cgroups, proc, timeout, call,
                                       exec_script(merged, command, workdir), max_output)
    finally:
        cgroups.remove_if_empty(call)
        with _live_lock:
            _live.discard(call)
    code = proc.returncode
    if timed_out:
        code = EXIT_TIMED_OUT
    elif code is not None and code < 0:
        code = 128 - code
    return ExecResult(exit_code=int(code if code is not None else EXIT_TIMED_OUT),
                      stdout=out.decode("utf-8", errors="replace"),
                      stderr=err.decode("utf-8", errors="replace"),
                      timed_out=timed_out)


def _collect(cgroups: Cgroups, proc: subprocess.Popen[bytes], timeout: float | None,
             call: str, script: bytes,
             max_output: int = MAX_OUTPUT_BYTES) -> tuple[bytes, bytes, bool]:
    """Feed ``script`` to the chain's stdin and read its output, in one loop: the script
    may be larger than a pipe holds, and the command may write before it is all read."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    streams = {out_fd: bytearray(), err_fd: bytearray()}
    open_fds = set(streams)
    feeding = True
    pending = memoryview(script)
    os.set_blocking(proc.stdin.fileno(), False)
    deadline = None if timeout is None else time.monotonic() + timeout
    exited_at: float | None = None
    timed_out = False
    try:
        while open_fds:
            now = time.monotonic()
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > OUTPUT_GRACE_S:
                break
            if deadline is not None and now >= deadline and exited_at is None:
                timed_out = True
                kill_call(cgroups, proc, call)
                exited_at = time.monotonic()
                continue
            wait = 0.05
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            writing = [proc.stdin.fileno()] if feeding else []
            ready, writable, _ = select.select(list(open_fds), writing, [], wait)
            if writable:
                try:
                    pending = pending[os.write(writable[0], pending[:65536]):]
                except BlockingIOError:
                    pass
                except BrokenPipeError:  # the chain failed before it read: its stderr says
                    pending = pending[:0]
                if not pending:
                    proc.stdin.close()
                    feeding = False
            for fd in ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    open_fds.discard(fd)
                    continue
                buf = streams[fd]
                if len(buf) < max_output:
                    buf += chunk[: max_output - len(buf)]
        if proc.poll() is None:
            # Output closed but the command runs on: wait for it within the deadline.
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                timed_out = True
                kill_call(cgroups, proc, call)
    finally:
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)
    return bytes(streams[out_fd]), bytes(streams[err_fd]), timed_out


def kill_call(cgroups: Cgroups, proc: subprocess.Popen[bytes], call: str) -> None:
    """Kill one exec's whole process tree, leaving no zombie behind.

    The host-side ``nsenter`` (``proc``) is spared at first: it must outlive the command's
    top process to reap it. Were both killed at once, that process would be re-parented to
    the host's pid 1, which on some hosts never reaps.
    """
    if cgroups.kill_all_but(call, proc.pid):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        cgroups.kill(call)
    else:
        # Without cgroups the best available is the call's session (start_new_session).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _remove_finished_calls(cgroups: Cgroups, sandbox_cgroup: str) -> None:
    """Cgroups of calls that ended while a process of theirs lived on, now empty. Not a
    live call's: it is empty too until its chain has joined it. Listed before ``_live`` is
    read: a call is live before its cgroup exists, so one listed is seen live if it is."""
    names = [n for n in cgroups.children(sandbox_cgroup) if n.startswith(CALL_PREFIX)]
    with _live_lock:
        live = set(_live)
    for name in names:
        rel = f"{sandbox_cgroup}/{name}"
        if rel not in live:
            cgroups.remove_if_empty(rel)
