"""The cgroup class on fake trees: the v2 path (no v2 controllers on our CI machines) and
mountinfo detection. These are the only fakes in the runner tests. And ``NoCgroups``, what
the runner gets on a host without cgroups."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pulumi_leap0.runner.cgroups import Cgroups, Limits, NoCgroups
from pulumi_leap0.runner.errors import RunnerError

V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
HYBRID_MOUNTINFO = (
    "35 30 0:30 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
    "36 30 0:31 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n"
    "37 30 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    "38 30 0:33 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
    "39 30 0:34 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer\n"
    "40 30 0:35 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
)


def fake_v2(tmp_path: Path) -> Path:
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (root / "cgroup.subtree_control").write_text("")
    return root


def test_v2_create_writes_limits_and_delegates(tmp_path: Path) -> None:
    root = fake_v2(tmp_path)
    cg = Cgroups(2, {"unified": root})
    leaf = root / "leap0/scope/sbx-1"
    leaf.mkdir(parents=True)
    (leaf / "memory.swap.max").write_text("max\n")  # present when swap accounting is on
    cg.create("leap0/scope/sbx-1", Limits(vcpu=2, memory_mib=512, pids_max=100))
    assert (leaf / "cpu.max").read_text() == "200000 100000"
    assert (leaf / "memory.max").read_text() == str(512 * 1024 * 1024)
    assert (leaf / "memory.swap.max").read_text() == "0"
    assert (leaf / "pids.max").read_text() == "100"
    for d in (root, root / "leap0", root / "leap0/scope"):
        assert (d / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    # The sandbox cgroup holds processes, so it must not distribute controllers.
    assert not (leaf / "cgroup.subtree_control").exists()
    assert cg.procs_files("leap0/scope/sbx-1") == [leaf / "cgroup.procs"]


def test_v2_freeze_thaw_and_accounting(tmp_path: Path) -> None:
    root = fake_v2(tmp_path)
    cg = Cgroups(2, {"unified": root})
    leaf = root / "leap0/s/sbx-2"
    cg.create("leap0/s/sbx-2")
    (leaf / "cgroup.events").write_text("populated 1\nfrozen 1\n")
    assert cg.freeze("leap0/s/sbx-2", timeout=0.1)
    assert (leaf / "cgroup.freeze").read_text() == "1"
    cg.thaw("leap0/s/sbx-2")
    assert (leaf / "cgroup.freeze").read_text() == "0"
    (leaf / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\n")
    (leaf / "memory.current").write_text("4096\n")
    assert cg.cpu_usage_ns("leap0/s/sbx-2") == 1_500_000
    assert cg.memory_bytes("leap0/s/sbx-2") == 4096
    (leaf / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    (leaf / "cgroup.kill").write_text("")
    assert cg.kill("leap0/s/sbx-2", timeout=0.1)
    assert (leaf / "cgroup.kill").read_text() == "1"


def test_detection(tmp_path: Path) -> None:
    hybrid = Cgroups.detect(HYBRID_MOUNTINFO)
    assert hybrid is not None and hybrid.version == 1
    assert set(hybrid.roots) == {"cpu", "cpuacct", "memory", "pids", "freezer"}
    root = fake_v2(tmp_path)
    v2 = Cgroups.detect(V2_MOUNTINFO.replace("/sys/fs/cgroup", str(root)))
    assert v2 is not None and v2.version == 2 and v2.roots == {"unified": root}
    assert Cgroups.detect("") is None


def test_v1_writes_every_hierarchy(tmp_path: Path) -> None:
    roots = {c: tmp_path / c for c in ("cpu", "cpuacct", "memory", "pids", "freezer")}
    for r in roots.values():
        r.mkdir()
    (tmp_path / "memory/leap0/s/b").mkdir(parents=True)
    (tmp_path / "memory/leap0/s/b/memory.memsw.limit_in_bytes").write_text("")
    cg = Cgroups(1, roots)
    cg.create("leap0/s/b", Limits(vcpu=3, memory_mib=1024))
    assert (tmp_path / "cpu/leap0/s/b/cpu.cfs_quota_us").read_text() == "300000"
    assert (tmp_path / "cpu/leap0/s/b/cpu.cfs_period_us").read_text() == "100000"
    mem = str(1024 * 1024 * 1024)
    assert (tmp_path / "memory/leap0/s/b/memory.limit_in_bytes").read_text() == mem
    assert (tmp_path / "memory/leap0/s/b/memory.memsw.limit_in_bytes").read_text() == mem
    assert (tmp_path / "pids/leap0/s/b/pids.max").read_text() == "512"
    assert len(cg.procs_files("leap0/s/b")) == 5


def test_without_cgroups_every_call_does_nothing_and_finds_nothing() -> None:
    cg = NoCgroups()
    cg.create("leap0/s/sbx-3", Limits(vcpu=2, memory_mib=512))
    assert cg.version is None and not cg.exists("leap0/s/sbx-3")
    assert cg.procs_files("leap0/s/sbx-3") == [] and cg.children("leap0/s") == []
    assert cg.pids("leap0/s/sbx-3") == set() and not cg.populated("leap0/s/sbx-3")
    assert not cg.is_frozen("leap0/s/sbx-3")
    assert (cg.cpu_usage_ns("leap0/s/sbx-3"), cg.memory_bytes("leap0/s/sbx-3"),
            cg.pids_current("leap0/s/sbx-3")) == (0, 0, 0)
    assert not any(cg.probe_writable("leap0/s/probe").values())
    assert cg.remove_if_empty("leap0/s/sbx-3")
    cg.remove("leap0/s/sbx-3")


def test_without_cgroups_killing_is_left_to_the_caller() -> None:
    # A process the caller must reach another way: NoCgroups says so, and leaves it alone.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert NoCgroups().kill("leap0/s/sbx-3") is False
        assert NoCgroups().kill_all_but("leap0/s/sbx-3", spare=0) is False
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_without_cgroups_pause_is_refused_with_the_reason() -> None:
    with pytest.raises(RunnerError, match="pause needs the cgroup freezer"):
        NoCgroups().freeze("leap0/s/sbx-3")
    with pytest.raises(RunnerError, match="resume needs the cgroup freezer"):
        NoCgroups().thaw("leap0/s/sbx-3")
