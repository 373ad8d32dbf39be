"""Fixtures for runner tests: a real Runner on this host, and capability gates.

Tests that need root, namespaces or cgroups call ``require_capability``: it skips with the
reason on a developer machine and fails in CI (``CI=true``), where every capability must
exist (see ``tests.support.require``).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pulumi_leap0.runner import Runner, SandboxConfig
from pulumi_leap0.runner.network import EgressSettings
from tests.fixtures.s3 import ALLOWED_CIDR
from tests.support import require

TEMPLATE = "system/debian:bookworm"


def require_capability(runner: Runner, *names: str) -> None:
    """Fail in CI, skip elsewhere, unless every named ``Capabilities`` field is true."""
    require(os.geteuid() == 0, "runner tests need root (namespaces, cgroups, netns)")
    caps = runner.capabilities()
    for name in names:
        require(bool(getattr(caps, name)), f"runner capability missing: {name} "
                f"({'; '.join(caps.missing) or 'no detail'})")


def new_id() -> str:
    return f"sbx-{secrets.token_hex(8)}"


class Sandboxes:
    """Starts sandboxes for one test and destroys whatever the test left behind."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.ids: list[str] = []

    def start(self, **kwargs: object) -> str:
        sandbox_id = str(kwargs.pop("id", new_id()))
        config = SandboxConfig(id=sandbox_id, template=str(kwargs.pop("template", TEMPLATE)),
                               **kwargs)  # type: ignore[arg-type]
        self.ids.append(sandbox_id)
        self.runner.start(config)
        return sandbox_id

    def cleanup(self) -> None:
        for sandbox_id in self.ids:
            self.runner.destroy(sandbox_id)


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    r = Runner(tmp_path_factory.mktemp("runner") / "sandboxes",
               egress=EgressSettings(allow_mount_endpoints=(ALLOWED_CIDR,)))
    require_capability(r, "bubblewrap", "namespaces")
    return r


@pytest.fixture
def limited_runner(runner: Runner) -> Runner:
    require_capability(runner, "cpu", "memory", "pids", "freezer", "cpuacct",
                       "network_namespaces")
    return runner


@pytest.fixture
def sandboxes(runner: Runner) -> Iterator[Sandboxes]:
    boxes = Sandboxes(runner)
    try:
        yield boxes
    finally:
        boxes.cleanup()


@contextmanager
def neighbours(runner: Runner, attacker: str, victim: str) -> Iterator[tuple[str, str]]:
    """Servers ``attacker`` must not reach: one in sandbox ``victim`` (port 8081) and one on
    the host (port 8082, every address). Yields the victim's address and the attacker's
    gateway, which is the host as seen from inside."""
    runner.exec(victim, "python3 -m http.server 8081 >/dev/null 2>&1 &", timeout=5)
    victim_ip = runner.exec(victim, "hostname -I").stdout.split()[0]
    gateway = runner.exec(attacker, "ip route show default").stdout.split()[2]
    host_server = subprocess.Popen([sys.executable, "-m", "http.server", "8082", "--bind",
                                    "0.0.0.0"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        yield victim_ip, gateway
    finally:
        host_server.kill()
        host_server.wait()


def leftovers(runner: Runner, sandbox_id: str) -> list[str]:
    """Every trace of ``sandbox_id`` the kernel or the file system still has."""
    found: list[str] = []
    marker = f"/leap0/{runner.scope}/{sandbox_id}"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cgroups = Path(f"/proc/{entry.name}/cgroup").read_text()
        except OSError:
            continue
        if marker in cgroups:
            found.append(f"process {entry.name}")
    for root in Path("/sys/fs/cgroup").iterdir():
        if (root / marker.lstrip("/")).exists():
            found.append(f"cgroup {root / marker.lstrip('/')}")
    state = str(runner.root_dir / sandbox_id)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if state in line.split(" ")[4]:
            found.append(f"mount {line.split(' ')[4]}")
    netns = Path("/run/netns") / f"leap0-{runner.scope}-{sandbox_id}"
    if netns.exists():
        found.append(f"netns {netns}")
    runtime = str(runner.runtime_dir / sandbox_id)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if runtime in line.split(" ")[4]:
            found.append(f"mount {line.split(' ')[4]}")
    for d in (state, runtime):
        if Path(d).exists():
            found.append(f"state {d}")
    return found


def zombies() -> set[int]:
    """Zombies this test process has not reaped: what a runner that forgets a ``wait``
    leaves. Only our own children, because other runs on a shared machine leave theirs."""
    found: set[int] = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_bytes()
            except OSError:
                continue
            state, parent = stat[stat.rindex(b")") + 2 :].split(b" ")[:2]
            if state == b"Z" and int(parent) == os.getpid():
                found.add(int(entry.name))
    return found
