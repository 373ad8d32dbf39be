from __future__ import annotations

from pathlib import Path

from pulumi_leap0.runner import DEFAULT_TEMPLATE, Runner, TemplateRegistry


def test_report_is_complete_and_honest(runner: Runner) -> None:
    caps = runner.capabilities()
    assert caps.bubblewrap and caps.namespaces
    assert caps.cgroup_version in (1, 2)
    # The report says what is missing, and only that.
    assert caps.object_storage_mounts == (not any("object-storage" in m for m in caps.missing))
    assert caps.network_policy == (caps.network_namespaces and caps.nftables)
    assert caps.network_policy == (not any("nftables" in m for m in caps.missing))
    assert all(m.endswith(".") for m in caps.missing)


def test_templates(tmp_path: Path) -> None:
    reg = TemplateRegistry()
    assert DEFAULT_TEMPLATE in reg and "system/base" in reg
    assert reg.get("nope") is None and "nope" not in reg
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "sh").write_text("")
    t = reg.register("custom/one:1", rootfs, user="dev", env={"A": "1"}, disk_mib=64)
    assert t.workdir == "/home/dev" and reg.get("custom/one:1") == t
    assert t.base_env()["A"] == "1" and t.base_env()["HOME"] == "/home/dev"
