"""Snapshots through the runner: capture a frozen layer, seed a new sandbox with it, a seed
larger than the new disk, a capture over its bound. The hostile layer's attacks are in
``tests/security/test_snapshots.py``."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pulumi_leap0.runner import Runner, RunnerError, SandboxConfig
from pulumi_leap0.runner.snapshots import SeedTooLarge, disk_bytes

from .conftest import TEMPLATE, Sandboxes, leftovers, new_id, require_capability


@pytest.fixture
def store(tmp_path: Path) -> Path:
    d = tmp_path / "snapshots"
    d.mkdir(mode=0o700)
    return d


def _snapshot(runner: Runner, sandbox_id: str, store: Path, **kwargs: bool) -> Path:
    dest = store / f"{new_id()}.tar"
    size = runner.snapshots.take(sandbox_id, dest, **kwargs)
    assert size == dest.stat().st_size > 0
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    return dest


def test_files_come_back_in_a_new_sandbox(limited_runner: Runner, sandboxes: Sandboxes,
                                          store: Path) -> None:
    runner = limited_runner
    a = sandboxes.start()
    runner.exec(a, "mkdir -p ~/project/.venv/bin && echo hello > ~/project/notes.txt && "
                   "chmod 640 ~/project/notes.txt && echo tmp > /tmp/t && echo vt > /var/tmp/v "
                   "&& ln -s /usr/bin/python3 ~/project/.venv/bin/python && "
                   "ln ~/project/notes.txt ~/hard && echo shm > /dev/shm/s")
    archive = _snapshot(runner, a, store)
    assert runner.is_alive(a) and not runner.is_frozen(a)  # thawed after

    b = sandboxes.start(seed=archive)
    out = runner.exec(b, "cat ~/project/notes.txt /tmp/t /var/tmp/v ~/hard; "
                         "stat -c '%a %U' ~/project/notes.txt; ~/project/.venv/bin/python -c "
                         "'print(42)'; ls /dev/shm; id -un").stdout
    assert out == "hello\ntmp\nvt\nhello\n640 user\n42\nuser\n"
    # The new sandbox owns its files as its own host uid, not the source's.
    rt = runner.runtime_dir / b / "layer" / "home" / "project" / "notes.txt"
    assert rt.stat().st_uid != (runner.runtime_dir / a / "layer" / "home").stat().st_uid
    assert rt.stat().st_uid == (runner.runtime_dir / b / "layer" / "home").stat().st_uid


def test_a_paused_sandbox_stays_paused_and_keep_frozen_holds(limited_runner: Runner,
                                                            sandboxes: Sandboxes,
                                                            store: Path) -> None:
    runner = limited_runner
    a = sandboxes.start()
    runner.freeze(a)
    _snapshot(runner, a, store)
    assert runner.is_frozen(a)
    runner.thaw(a)
    _snapshot(runner, a, store, keep_frozen=True)
    assert runner.is_frozen(a)


def test_a_snapshot_bigger_than_the_new_disk_fails_and_leaves_nothing(
        limited_runner: Runner, sandboxes: Sandboxes, store: Path) -> None:
    require_capability(limited_runner, "disk_limit")
    runner = limited_runner
    a = sandboxes.start()
    runner.exec(a, "head -c 40M /dev/urandom > ~/big")
    archive = _snapshot(runner, a, store)
    small = new_id()
    with pytest.raises(SeedTooLarge):
        runner.start(SandboxConfig(id=small, template=TEMPLATE, disk_mib=16, seed=archive))
    assert leftovers(runner, small) == []
    fits = sandboxes.start(disk_mib=64, seed=archive)
    assert runner.exec(fits, "stat -c %s ~/big").stdout == f"{40 * 1024 * 1024}\n"


def test_a_capture_over_its_limit_fails_and_thaws(limited_runner: Runner, sandboxes: Sandboxes,
                                                  store: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    runner = limited_runner
    a = sandboxes.start()
    runner.exec(a, "head -c 8M /dev/urandom > ~/big")
    monkeypatch.setattr("pulumi_leap0.runner.snapshots.HEADER_ALLOWANCE_BYTES",
                        -disk_bytes(runner.runtime_dir / a / "layer") + 1024 * 1024)
    dest = store / "over.tar"
    with pytest.raises(RunnerError, match="larger than a snapshot"):
        runner.snapshots.take(a, dest)
    assert not dest.exists()
    assert not runner.is_frozen(a)
