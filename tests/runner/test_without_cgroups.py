"""A host that gives the runner no cgroups: sandboxes still start, run, time out and go
away completely, through the paths that do not rely on a cgroup to find processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pulumi_leap0.runner import Runner, RunnerError, SandboxConfig, SandboxStats, cgroups
from pulumi_leap0.runner.cgroups import NoCgroups

from .conftest import TEMPLATE, leftovers, new_id, require_capability


def test_a_runner_without_cgroups_runs_and_removes_sandboxes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cgroups, "for_scope", lambda rel: NoCgroups())
    runner = Runner(tmp_path / "sandboxes")
    require_capability(runner, "bubblewrap", "namespaces")
    caps = runner.capabilities()
    assert caps.cgroup_version is None and not caps.cpu
    assert "no usable cgroup hierarchy: no CPU, memory or process limits." in caps.missing
    sandbox_id = new_id()
    runner.start(SandboxConfig(id=sandbox_id, template=TEMPLATE))
    try:
        assert runner.exec(sandbox_id, "echo hi").stdout == "hi\n"
        # The call's session is all there is to kill: background children go with it.
        late = runner.exec(sandbox_id, "sleep 61 & sleep 62", timeout=1)
        assert late.timed_out
        assert "sleep 6" not in runner.exec(sandbox_id, "ps -eo args").stdout
        with pytest.raises(RunnerError, match="pause needs the cgroup freezer"):
            runner.freeze(sandbox_id)
        assert runner.stats(sandbox_id) == SandboxStats(0, 0, 0)
        outer = runner._records.get(sandbox_id)
        assert outer is not None and outer.outer_pid
        outer_pid = outer.outer_pid
    finally:
        runner.destroy(sandbox_id)
    # No cgroup kill reached bubblewrap's monitor, and it is gone and reaped all the same.
    assert not Path(f"/proc/{outer_pid}").exists()
    assert leftovers(runner, sandbox_id) == []
