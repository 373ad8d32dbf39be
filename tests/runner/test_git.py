"""``Runner.git.run``: git as an exec of an argv in the sandbox, bounded in time and output, its
credentials on a pipe that nothing in the sandbox keeps."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pulumi_leap0 import spec
from pulumi_leap0.runner import Runner
from pulumi_leap0.runner.git import GitCredentials, git_argv
from tests.fixtures.git_server import GitServer
from tests.runner.conftest import Sandboxes, zombies

ALLOW_ALL = spec.NetworkPolicy(mode="allow-all")


def test_a_git_call_ends_at_its_deadline_with_every_process_it_started(
        runner: Runner, sandboxes: Sandboxes, git_server: GitServer) -> None:
    box = sandboxes.start(network_policy=ALLOW_ALL)
    started = time.monotonic()
    run = runner.git.run(box, ["clone", "--", git_server.url("stall", "never.git"), "/tmp/x"],
                         env={}, timeout=2, max_output=spec.MAX_GIT_OUTPUT_BYTES,
                         credentials=GitCredentials("u", "p"))
    assert run.timed_out and time.monotonic() - started < 7
    left = runner.exec(box, "ps -eo args --no-headers").stdout
    assert "git" not in left, left
    # Only this sandbox's: the machine and this test process have others' (every process
    # of the call, the host-side nsenter too, is in the sandbox's cgroup).
    mine = [pid for pid in zombies() if _in_cgroup_of(pid, box)]
    assert mine == [], mine


def _in_cgroup_of(pid: int, box: str) -> bool:
    try:
        return box in Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False


def test_output_is_cut_at_the_bound_and_says_so(runner: Runner, sandboxes: Sandboxes) -> None:
    box = sandboxes.start()
    assert runner.exec(box, "git init -q /tmp/r && cd /tmp/r && seq 1 100000 > n && "
                            "git add n").exit_code == 0
    run = runner.git.run(box, ["-C", "/tmp/r", "diff", "--cached"], env={}, timeout=30,
                         max_output=1000)
    assert run.exit_code == 0 and run.cut and len(run.output.encode()) <= 1000
    whole = runner.git.run(box, ["-C", "/tmp/r", "status", "--short"], env={}, timeout=30,
                           max_output=1000)
    assert (whole.output, whole.cut) == ("A  n\n", False)


def test_the_argv_holds_no_credentials_and_no_shell_sees_the_values() -> None:
    argv = git_argv(["clone", "--", "$(touch /tmp/x)", "/tmp/y"], credential_fd=7)
    assert argv[0] == "/usr/bin/git" and argv[-3:] == ["--", "$(touch /tmp/x)", "/tmp/y"]
    # The sandbox's own helpers are dropped first, ours reads the pipe.
    helpers = [a for a in argv if a.startswith("credential.helper=")]
    assert helpers[0] == "credential.helper=" and "/proc/self/fd/7" in helpers[1]


def test_a_chain_that_failed_before_git_ran_is_no_git_failure_and_names_no_host_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the chain's own exit codes (a cgroup it could not join, ``env``
    failing) are the host's trouble, reported without the chain's words."""
    from pulumi_leap0.runner import git
    from pulumi_leap0.runner.types import ExecResult

    failure = ExecResult(exit_code=121, stdout="", timed_out=False,
                         stderr="leap0-join: cannot create /sys/fs/cgroup/leap0/x/cgroup.procs")
    monkeypatch.setattr(git, "run_command", lambda *a, **k: failure)
    with pytest.raises(git.GitNotStarted) as raised:
        git.run_git(None, "", None, ["status"], env={}, timeout=1,  # type: ignore[arg-type]
                    max_output=100)
    assert "/sys/fs" not in str(raised.value)


def test_a_sandbox_without_git_is_told_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from pulumi_leap0.runner import git
    from pulumi_leap0.runner.types import ExecResult

    missing = ExecResult(exit_code=127, stdout="", timed_out=False,
                         stderr="/usr/bin/env: '/usr/bin/git': No such file or directory\n")
    monkeypatch.setattr(git, "run_command", lambda *a, **k: missing)
    with pytest.raises(git.GitMissing):
        git.run_git(None, "", None, ["status"], env={}, timeout=1,  # type: ignore[arg-type]
                    max_output=100)
