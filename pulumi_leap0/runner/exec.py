"""Running one command in a running sandbox (``Runner.exec``).

The command is a chain like the init's (``launch.py``): ``sh`` joins a fresh child cgroup
of the sandbox's, ``x-<token>``, so a timeout can kill exactly this call's process tree
however it forked or daemonized, while the sandbox's limits and freezer hold it too; then
``nsenter`` enters every namespace of the sandbox's init, its root and its working
directory as the sandbox user, and ``env -i`` sets exactly the sandbox's environment. The
chain starts under the sandbox's seccomp filter (``seccomp.popen``): nothing of the init's
filter carries over to a process that ``nsenter`` starts from the host.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import subprocess
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


def exec_argv(*, cgroup_procs: list[Path], init_pid: int, uid: int, workdir: str,
              env: Mapping[str, str], command: str | Sequence[str]) -> list[str]:
    """A ``str`` command runs as ``/bin/sh -c command``; a sequence is a program's argv,
    run as it is (no shell sees it: how the git calls run)."""
    program = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    return [*launch.join_cgroups(cgroup_procs),
            "nsenter", f"--target={init_pid}", "--user", "--mount", "--uts", "--ipc",
            "--net", "--pid", "--cgroup", "--root", "--wd",
            f"--setuid={uid}", f"--setgid={uid}", "--",
            "/usr/bin/env", "-i", f"--chdir={workdir}", "--",
            *(f"{k}={v}" for k, v in env.items()), *program]


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
    _remove_finished_calls(cgroups, sandbox_cgroup)
    cgroups.create(call)
    argv = exec_argv(cgroup_procs=cgroups.procs_files(call), init_pid=box.init_pid,
                     uid=box.uid, workdir=workdir, env=merged, command=command)
    try:
        proc = seccomp.popen(argv, env=sysutil.HOST_ENV, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True, cwd="/", pass_fds=tuple(pass_fds))
    except OSError as exc:
        cgroups.remove_if_empty(call)
        raise RunnerError(f"could not run the command: {exc}") from exc
    out, err, timed_out = _collect(cgroups, proc, timeout, call, max_output)
    code = proc.returncode
    if timed_out:
        code = EXIT_TIMED_OUT
    elif code is not None and code < 0:
        code = 128 - code
    cgroups.remove_if_empty(call)
    return ExecResult(exit_code=int(code if code is not None else EXIT_TIMED_OUT),
                      stdout=out.decode("utf-8", errors="replace"),
                      stderr=err.decode("utf-8", errors="replace"),
                      timed_out=timed_out)


def _collect(cgroups: Cgroups, proc: subprocess.Popen[bytes], timeout: float | None,
             call: str, max_output: int = MAX_OUTPUT_BYTES) -> tuple[bytes, bytes, bool]:
    assert proc.stdout is not None and proc.stderr is not None
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    streams = {out_fd: bytearray(), err_fd: bytearray()}
    open_fds = set(streams)
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
                _kill_call(cgroups, proc, call)
                exited_at = time.monotonic()
                continue
            wait = 0.05
            if deadline is not None:
                wait = min(wait, max(0.0, deadline - now))
            ready, _, _ = select.select(list(open_fds), [], [], wait)
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
                _kill_call(cgroups, proc, call)
    finally:
        proc.stdout.close()
        proc.stderr.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5.0)
    return bytes(streams[out_fd]), bytes(streams[err_fd]), timed_out


def _kill_call(cgroups: Cgroups, proc: subprocess.Popen[bytes], call: str) -> None:
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
    for name in cgroups.children(sandbox_cgroup):
        if name.startswith(CALL_PREFIX):
            cgroups.remove_if_empty(f"{sandbox_cgroup}/{name}")
