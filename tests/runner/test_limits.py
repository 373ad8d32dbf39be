"""Limits hold: memory (OOM inside the sandbox only), CPU quota, pids, and the freezer."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pulumi_leap0.runner import Runner, cgroupmoves, sysutil
from pulumi_leap0.runner.cgroups import V1_CONTROLLERS
from tests.support import require

from .conftest import Sandboxes, leftovers


def test_memory_hog_is_oom_killed_alone(limited_runner: Runner, sandboxes: Sandboxes) -> None:
    runner = limited_runner
    hog, neighbour = sandboxes.start(memory_mib=512), sandboxes.start(memory_mib=512)
    runner.exec(neighbour, "nohup sleep 600 >/dev/null 2>&1 &")
    r = runner.exec(hog, "python3 -c 'b = bytearray(1100 * 1024 * 1024); b[::4096] = "
                    "b\"x\" * len(b[::4096]); print(\"survived\")'", timeout=60)
    assert "survived" not in r.stdout
    assert r.exit_code == 137, (r.exit_code, r.stderr)
    assert runner.is_alive(hog) and runner.is_alive(neighbour)
    assert runner.exec(hog, "echo alive").stdout == "alive\n"
    assert "sleep 600" in runner.exec(neighbour, "ps -eo args").stdout
    os.kill(os.getpid(), 0)  # and the test process lives on


def test_vcpu_quota(limited_runner: Runner, sandboxes: Sandboxes) -> None:
    runner = limited_runner
    a = sandboxes.start(vcpu=1)
    runner.exec(a, "for i in 1 2 3 4; do (while :; do :; done) & done")
    time.sleep(0.3)  # let the loops get going
    before, t0 = runner.stats(a).cpu_usage_ns, time.monotonic()
    time.sleep(2.0)
    used, wall = runner.stats(a).cpu_usage_ns - before, time.monotonic() - t0
    ratio = used / 1e9 / wall
    assert ratio <= 1.25, f"vcpu=1 used {ratio:.2f} CPU-seconds per second"
    assert ratio >= 0.5, f"the busy loops barely ran ({ratio:.2f}): is accounting working?"


def test_fork_bomb_is_contained(limited_runner: Runner, sandboxes: Sandboxes) -> None:
    runner = limited_runner
    a = sandboxes.start()
    r = runner.exec(a, "bomb() { bomb | bomb & }; bomb", timeout=5)
    assert r.exit_code in (0, 124) or r.timed_out
    assert runner.stats(a).pids <= 512
    os.kill(os.getpid(), 0)
    # The host still forks fine and the sandbox can be torn down completely.
    assert os.system("true") == 0
    runner.destroy(a)
    assert leftovers(runner, a) == []


def test_freeze_keeps_state_and_stops_time(limited_runner: Runner,
                                           sandboxes: Sandboxes) -> None:
    runner = limited_runner
    a = sandboxes.start()
    runner.exec(a, "nohup sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/n; "
                "sleep 0.05; done' >/dev/null 2>&1 &")
    time.sleep(0.5)
    runner.freeze(a)
    assert runner.is_frozen(a)
    # File calls are the sandbox's own work and pause with it: read the layer from the host.
    counter = runner.runtime_dir / a / "layer" / "tmp" / "n"
    frozen_at = counter.read_bytes()
    time.sleep(0.6)
    assert counter.read_bytes() == frozen_at  # no progress while frozen
    runner.thaw(a)
    assert not runner.is_frozen(a)
    time.sleep(0.5)
    after = int(runner.files.read_file(a, "/tmp/n"))
    assert after > int(frozen_at)  # the same process carried on counting
    # One loop, not a restarted one. Read thrice: the loop forks `sleep` every 50 ms, and a
    # child caught between fork and exec shows the loop's own command line for an instant.
    counts = [runner.exec(a, "ps -eo args | grep -c '^sh -c i=0'").stdout.strip()
              for _ in range(3)]
    assert min(counts) == "1", counts


def _favoured_mounts() -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if " - cgroup " in line and "favordynmods" in line.partition(" - ")[2]]


def test_a_runner_keeps_cgroup_moves_cheap_with_a_hierarchy_that_limits_nothing(
        limited_runner: Runner, tmp_path: Path) -> None:
    # Without it, each sandbox's first cgroup move waits for an RCU grace period (6-15 ms
    # of every create): cgroupmoves.favor_dynamic_moves. Start from a host without it.
    while any(f" {cgroupmoves.DYNMODS_MOUNT} " in line for line in _favoured_mounts()):
        sysutil.umount(cgroupmoves.DYNMODS_MOUNT, lazy=False)
    require(not _favoured_mounts(), "another favordynmods cgroup mount is on this host")
    fresh = Runner(tmp_path / "fresh")
    try:
        mounted = [line for line in _favoured_mounts() if f" {cgroupmoves.DYNMODS_MOUNT} " in line]
        assert len(mounted) == 1, _favoured_mounts()
        options = mounted[0].partition(" - ")[2].split(" ")[2].split(",")
        assert not set(options) & set(V1_CONTROLLERS), options  # it limits nothing
    finally:
        fresh.close()
