"""exec: environment, working directory, exit codes, output, and timeouts that kill trees."""

from __future__ import annotations

import time

from pulumi_leap0.runner import EXIT_TIMED_OUT, Runner, RunnerError

from .conftest import Sandboxes, zombies


def test_env_vars_reach_exec_and_init(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start(env={"GREETING": "hello world", "EMPTY": "", "QUOTE": "a'b\"c $x"})
    r = runner.exec(a, 'printf "%s|%s|%s|%s" "$GREETING" "$EMPTY" "$QUOTE" "$CALL"',
                    env={"CALL": "per-call"})
    assert r.stdout == "hello world||a'b\"c $x|per-call"
    init_env = runner.exec(a, "tr '\\0' '\\n' < /proc/1/environ").stdout
    assert "GREETING=hello world" in init_env


def test_host_environment_does_not_leak(runner: Runner, sandboxes: Sandboxes,
                                        monkeypatch: object) -> None:
    a = sandboxes.start()
    out = runner.exec(a, "env").stdout
    names = {line.split("=", 1)[0] for line in out.splitlines() if "=" in line}
    assert names <= {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "TMPDIR", "PWD",
                     "SHLVL", "_"}, names


def test_cwd_exit_code_and_streams(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    r = runner.exec(a, "pwd; echo err >&2; exit 7", cwd="/tmp")
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out) == (7, "/tmp\n", "err\n", False)
    assert runner.exec(a, "kill -TERM $$").exit_code == 128 + 15
    assert runner.exec(a, "pwd", cwd="sub").exit_code != 0  # missing relative dir
    runner.exec(a, "mkdir sub")
    assert runner.exec(a, "pwd", cwd="sub").stdout == "/home/user/sub\n"


def test_bad_env_names_are_refused(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    for bad in ("A=B", "", "-i", "X\x00"):
        try:
            runner.exec(a, "true", env={bad: "v"})
        except RunnerError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_timeout_kills_the_whole_tree(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    before = zombies()
    start = time.monotonic()
    r = runner.exec(a, "(setsid sleep 300 &) ; sleep 301 & echo started; sleep 302", timeout=1)
    assert time.monotonic() - start < 5
    assert r.timed_out and r.exit_code == EXIT_TIMED_OUT
    assert r.stdout == "started\n"
    left = runner.exec(a, "ps -eo args --no-headers").stdout
    assert "sleep 30" not in left, left
    assert zombies() <= before


def test_background_process_survives_a_normal_exit(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    start = time.monotonic()
    r = runner.exec(a, "nohup sleep 120 >/dev/null 2>&1 & echo bg", timeout=10)
    assert r.exit_code == 0 and r.stdout == "bg\n"
    assert time.monotonic() - start < 5  # the background sleep did not hold the call
    assert "sleep 120" in runner.exec(a, "ps -eo args --no-headers").stdout


def test_exec_on_unknown_or_stopped(runner: Runner, sandboxes: Sandboxes) -> None:
    try:
        runner.exec("sbx-doesnotexist", "true")
    except RunnerError:
        pass
    else:
        raise AssertionError("exec on an unknown sandbox succeeded")
    a = sandboxes.start()
    runner.stop(a)
    try:
        runner.exec(a, "true")
    except RunnerError:
        pass
    else:
        raise AssertionError("exec on a stopped sandbox succeeded")
