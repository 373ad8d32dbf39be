"""Teardown leaves nothing; stop keeps the disk; recovery finds the truth after restarts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pulumi_leap0.runner import MountConfig, Runner, RunnerError, SandboxConfig

from .conftest import TEMPLATE, Sandboxes, leftovers, new_id, require_capability, zombies


def test_destroy_is_complete_and_idempotent(limited_runner: Runner) -> None:
    runner = limited_runner
    a = new_id()
    runner.start(SandboxConfig(id=a, template=TEMPLATE))
    runner.exec(a, "nohup sleep 600 >/dev/null 2>&1 & echo x > /tmp/x")
    assert leftovers(runner, a)  # sanity: the helper does see a live sandbox
    runner.destroy(a)
    assert leftovers(runner, a) == []
    runner.destroy(a)
    runner.destroy("sbx-never-existed")


def test_200_create_destroy_cycles_leave_nothing(limited_runner: Runner) -> None:
    runner = limited_runner
    before = zombies()
    ids = []
    start = time.monotonic()
    for _ in range(200):
        sandbox_id = new_id()
        ids.append(sandbox_id)
        runner.start(SandboxConfig(id=sandbox_id, template=TEMPLATE))
        runner.destroy(sandbox_id)
    elapsed = time.monotonic() - start
    remaining = [trace for sandbox_id in ids for trace in leftovers(runner, sandbox_id)]
    assert remaining == []
    assert zombies() <= before
    assert elapsed < 60, f"200 cycles took {elapsed:.1f}s"


def test_stop_keeps_the_disk_and_start_boots_again(runner: Runner,
                                                   sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    runner.exec(a, "echo kept > ~/file; nohup sleep 600 >/dev/null 2>&1 &")
    runner.stop(a)
    assert not runner.is_alive(a)
    runner.stop(a)  # idempotent
    runner.start(SandboxConfig(id=a, template=TEMPLATE))
    assert runner.exec(a, "cat ~/file").stdout == "kept\n"
    assert "sleep 600" not in runner.exec(a, "ps -eo args").stdout


def test_start_twice_is_refused(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    with pytest.raises(RunnerError):
        runner.start(SandboxConfig(id=a, template=TEMPLATE))
    assert runner.is_alive(a)


def test_failed_start_cleans_up(limited_runner: Runner) -> None:
    runner = limited_runner
    with pytest.raises(RunnerError):
        runner.start(SandboxConfig(id=new_id(), template="nope/none:1"))
    a = new_id()
    mount = MountConfig(id="mnt-1", bucket="b", mount_path="/data", endpoint="http://127.0.0.1:1",
                        access_key_id="AKIDSECRET", secret_access_key="SHHH")
    with pytest.raises(RunnerError) as info:
        runner.start(SandboxConfig(id=a, template=TEMPLATE, mounts=[mount]))
    assert "SHHH" not in str(info.value) and "AKIDSECRET" not in repr(mount)
    assert leftovers(runner, a) == []
    with pytest.raises(RunnerError):
        runner.start(SandboxConfig(id="../escape", template=TEMPLATE))


def test_recover_removes_orphans_and_reports_alive(tmp_path: Path) -> None:
    root = tmp_path / "sandboxes"
    first = Runner(root)
    require_capability(first, "bubblewrap", "namespaces", "cpu", "network_namespaces")
    kept, orphan, stopped = new_id(), new_id(), new_id()
    for sandbox_id in (kept, orphan, stopped):
        first.start(SandboxConfig(id=sandbox_id, template=TEMPLATE))
    first.exec(kept, "echo state > ~/s; nohup sleep 600 >/dev/null 2>&1 &")
    first.exec(stopped, "echo disk > ~/d")
    first.stop(stopped)
    del first  # the backend went away; its sandboxes did not

    second = Runner(root)
    try:
        alive = second.recover([kept, stopped, "sbx-gone"])
        assert alive == {kept}
        assert leftovers(second, orphan) == []
        assert second.is_alive(kept)
        assert second.exec(kept, "cat ~/s").stdout == "state\n"
        assert "sleep 600" in second.exec(kept, "ps -eo args").stdout
        second.start(SandboxConfig(id=stopped, template=TEMPLATE))
        assert second.exec(stopped, "cat ~/d").stdout == "disk\n"
    finally:
        for sandbox_id in (kept, orphan, stopped):
            second.destroy(sandbox_id)
    assert all(leftovers(second, s) == [] for s in (kept, orphan, stopped))


def test_runners_with_different_roots_do_not_reap_each_other(tmp_path: Path) -> None:
    one, two = Runner(tmp_path / "one"), Runner(tmp_path / "two")
    require_capability(one, "bubblewrap", "namespaces", "cpu")
    a = new_id()
    one.start(SandboxConfig(id=a, template=TEMPLATE))
    try:
        assert two.recover([]) == set()
        assert one.is_alive(a)
    finally:
        one.destroy(a)


def test_sandbox_outlives_the_runner_process(tmp_path: Path) -> None:
    """The init is not tied to the process that started it (no die-with-parent)."""
    import subprocess
    import sys

    root = tmp_path / "sandboxes"
    probe = Runner(root)
    require_capability(probe, "bubblewrap", "namespaces", "cpu")
    a = new_id()
    code = ("import sys; from pathlib import Path; from pulumi_leap0.runner import *; "
            f"Runner(Path({str(root)!r})).start(SandboxConfig(id={a!r}, template={TEMPLATE!r}))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[2])
    try:
        again = Runner(root)
        assert again.recover([a]) == {a}
        assert again.exec(a, "echo hi").stdout == "hi\n"
    finally:
        Runner(root).destroy(a)
    assert leftovers(probe, a) == []
