"""Running ``git`` in a sandbox: an exec (``exec.py``) of the sandbox's own ``/usr/bin/git``
(the host's read-only ``/usr``) as the sandbox user, in every namespace of the sandbox, so
its network policy decides what a clone, push or pull reaches.

The program is an argv, never a shell string: exec hands it to the sandbox's shell word by
word, single-quoted, to ``exec`` as it is; whoever builds ``args`` puts ``--`` before paths,
and option-looking refs are refused before they get here (``backend/gitmodels.py``).

Credentials of a call reach git on a pipe, not in its argv or environment: the runner writes
``username=...`` and ``password=...`` into a pipe, closes its end, and the call inherits the
read end (``exec.run_command(pass_fds=...)``) through ``nsenter`` and the sandbox's shell
into git. The call's only credential helper (``-c credential.helper=`` first empties the
list the sandbox's own configuration made, so no ``store`` helper of it writes them to
disk) is ``cat /proc/self/fd/N`` of that descriptor (owned by the sandbox's host uid, so it
may open it again): git asks it when the remote wants them, reads them once, and keeps them
in memory for the call. Nothing of them is in any argv, environment, file or log, and once
read the pipe is empty; a process the call leaves behind holds an empty pipe. Git runs as
the sandbox's own user, so a process of the sandbox that watches it could ptrace it or read
the pipe during the call (the sandbox is the credential's user for that call).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from pulumi_leap0.runner.cgroups import Cgroups
from pulumi_leap0.runner.errors import RunnerError
from pulumi_leap0.runner.exec import run_command
from pulumi_leap0.runner.state import Records, SandboxState

GIT = "/usr/bin/git"
#: Transports a call may use: no ``ext::`` (runs a command) and nothing git adds later.
ALLOWED_PROTOCOLS = "file:git:http:https:ssh"
#: The environment of every git call, over the sandbox's: nothing waits for a terminal or an
#: editor, no pager, no askpass program of the sandbox's, English messages as git writes them.
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ALLOW_PROTOCOL": ALLOWED_PROTOCOLS,
    "GIT_EDITOR": "true",
    "GIT_SEQUENCE_EDITOR": "true",
    "GIT_MERGE_AUTOEDIT": "no",
    "GIT_PAGER": "cat",
    "GIT_ASKPASS": "",
    "SSH_ASKPASS": "",
    "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
    "LC_ALL": "C",
}
#: Configuration of every call. No automatic gc or maintenance: they detach and would run
#: on past the call's deadline, outside its bound.
GIT_CONFIG = ("gc.auto=0", "maintenance.auto=false", "color.ui=false", "core.pager=cat",
              "advice.detachedHead=false", "credential.helper=")

#: Exit codes of the exec chain itself (``launch.JOIN``'s 121, the working directory's 125,
#: the shell's 126 for a program it cannot execute), which git never uses: git did not run,
#: and what the chain wrote may name host paths. The shell's 127 is the sandbox's own: its
#: root has no ``/usr/bin/git`` (a template image without it).
CHAIN_EXIT_CODES = frozenset({121, 125, 126})
NOT_FOUND = 127


class GitNotStarted(RunnerError):
    """The chain that enters the sandbox failed before git ran (no detail: it is the
    host's, not the caller's)."""


class GitMissing(RunnerError):
    """The sandbox has no git to run."""


@dataclass(frozen=True)
class GitCredentials:
    username: str
    password: str = field(repr=False)

    def helper_answer(self) -> bytes:
        # The credential protocol is lines of key=value: the rules refuse newlines and NULs.
        return f"username={self.username}\npassword={self.password}\n".encode()


@dataclass(frozen=True)
class GitRun:
    exit_code: int
    #: stdout, then stderr, at most ``max_output`` bytes of them (``cut`` says if more).
    output: str
    timed_out: bool
    cut: bool


def git_argv(args: Sequence[str], *, credential_fd: int | None = None) -> list[str]:
    options = [part for item in GIT_CONFIG for part in ("-c", item)]
    if credential_fd is not None:
        # Through /proc/self/fd: dash redirects only descriptors 0 to 9.
        helper = f'!f() {{ test "$1" = get && cat /proc/self/fd/{credential_fd}; }}; f'
        options += ["-c", f"credential.helper={helper}"]
    return [GIT, "--no-pager", *options, *args]


def run_git(cgroups: Cgroups, sandbox_cgroup: str, box: SandboxState, args: Sequence[str], *,
            env: Mapping[str, str], timeout: float, max_output: int,
            credentials: GitCredentials | None = None) -> GitRun:
    read_end: int | None = None
    if credentials is not None:
        read_end, write_end = os.pipe()
        try:
            # The helper opens it again by name, which the kernel checks against the pipe's
            # owner: the sandbox's host uid, as the sandbox's own pipes are.
            os.fchown(read_end, box.host_uid, box.host_gid)
            # A few KiB at most (spec.MAX_GIT_CREDENTIAL_BYTES): the pipe holds them all, so
            # this never blocks, and the call sees end of file after them.
            os.write(write_end, credentials.helper_answer())
        finally:
            os.close(write_end)
    try:
        result = run_command(
            cgroups, sandbox_cgroup, box, git_argv(args, credential_fd=read_end), cwd=None,
            env={**GIT_ENV, **env}, timeout=timeout,
            pass_fds=() if read_end is None else (read_end,), max_output=max_output + 1)
    finally:
        if read_end is not None:
            with contextlib.suppress(OSError):
                os.close(read_end)
    if result.exit_code in CHAIN_EXIT_CODES or result.stderr.startswith("nsenter:"):
        raise GitNotStarted("git could not be started in the sandbox; try again")
    if result.exit_code == NOT_FOUND and not result.stdout and GIT in result.stderr:
        raise GitMissing(f"the sandbox has no {GIT}: its template does not include git")
    output = result.stdout
    if result.stderr:
        output += ("" if not output or output.endswith("\n") else "\n") + result.stderr
    encoded = output.encode()
    cut = len(encoded) > max_output
    if cut:
        output = encoded[:max_output].decode(errors="ignore")
    return GitRun(exit_code=result.exit_code, output=output, timed_out=result.timed_out,
                  cut=cut)


class SandboxGit:
    """Git in this runner's running sandboxes (``Runner.git``). ``cgroup_of`` names a
    sandbox's cgroup, below which each run gets its own, as an exec does."""

    def __init__(self, records: Records, cgroups: Cgroups,
                 cgroup_of: Callable[[str], str]) -> None:
        self._records, self._cgroups, self._cgroup_of = records, cgroups, cgroup_of

    def run(self, sandbox_id: str, args: Sequence[str], *, env: Mapping[str, str],
            timeout: float, max_output: int,
            credentials: GitCredentials | None = None) -> GitRun:
        """``git args...`` in the sandbox as its user, an exec like any other (its network
        policy applies); ``credentials`` reach git on a pipe."""
        box = self._records.running(sandbox_id)
        return run_git(self._cgroups, self._cgroup_of(box.id), box, args, env=env,
                       timeout=timeout, max_output=max_output, credentials=credentials)
