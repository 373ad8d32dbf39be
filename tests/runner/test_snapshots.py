"""Snapshots through the runner: capture a frozen layer, seed a new sandbox with it, and the
hostile layer's attacks (links out of it, special files, more than the new disk holds)."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from pulumi_leap0.runner import Runner, RunnerError, SandboxConfig
from pulumi_leap0.runner.snapshots import SeedTooLarge

from .conftest import TEMPLATE, Sandboxes, leftovers, new_id, require_capability


@pytest.fixture
def store(tmp_path: Path) -> Path:
    d = tmp_path / "snapshots"
    d.mkdir(mode=0o700)
    return d


def _snapshot(runner: Runner, sandbox_id: str, store: Path, **kwargs: bool) -> Path:
    dest = store / f"{new_id()}.tar"
    size = runner.snapshot(sandbox_id, dest, **kwargs)
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


def test_links_out_of_the_layer_are_kept_as_links_never_followed(
        limited_runner: Runner, sandboxes: Sandboxes, store: Path) -> None:
    """The tenant points links at the host's secrets and at another sandbox's files: the
    archive holds the links, not what they point at, and restoring writes nothing there."""
    runner = limited_runner
    victim = sandboxes.start()
    runner.exec(victim, "echo victim-secret > ~/secret")
    victim_home = runner.runtime_dir / victim / "layer" / "home"
    attacker = sandboxes.start()
    runner.exec(attacker, f"ln -s /etc/shadow ~/shadow; ln -s {victim_home} ~/victim; "
                          f"ln -s {victim_home}/secret ~/secret; ln -s / ~/root; "
                          "mkdir ~/d && ln -s /etc ~/d/etc")
    archive = _snapshot(runner, attacker, store)
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        data = archive.read_bytes()
    assert b"victim-secret" not in data
    assert b"root:" not in data  # /etc/shadow's first line
    for name, target in (("home/shadow", "/etc/shadow"), ("home/victim", str(victim_home)),
                         ("home/root", "/")):
        assert members[name].issym() and members[name].linkname == target
    assert not any(n.startswith(("home/victim/", "home/root/", "home/d/etc/")) for n in members)

    restored = sandboxes.start(seed=archive)
    assert runner.exec(restored, "readlink ~/shadow").stdout == "/etc/shadow\n"
    assert (victim_home / "secret").read_text() == "victim-secret\n"


def test_a_crafted_archive_cannot_write_through_its_links(limited_runner: Runner,
                                                          sandboxes: Sandboxes,
                                                          tmp_path: Path) -> None:
    """Defence in depth, should an archive ever be made by something else than capture: a
    link followed by a file under it, absolute and ``..`` names, a hard link to a host
    file, and a device node are never written outside the new layer."""
    runner = limited_runner
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o777)
    os.chmod(outside, 0o777)
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        link = tarfile.TarInfo("home/out")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        tar.addfile(link)
        for name in ("home/out/pwned", f"/{outside}/abs", "home/../../../escape"):
            member = tarfile.TarInfo(name)
            member.size = 5
            tar.addfile(member, fileobj=__import__("io").BytesIO(b"pwned"))
    with pytest.raises(RunnerError):
        runner.start(SandboxConfig(id=new_id(), template=TEMPLATE, seed=archive))
    assert list(outside.iterdir()) == []

    for member in (_hard_link("home/shadow", "/etc/shadow"), _device("home/null")):
        crafted = tmp_path / f"{member.name.replace('/', '_')}.tar"
        with tarfile.open(crafted, "w") as tar:
            tar.addfile(member)
        sandbox_id = new_id()
        try:
            runner.start(SandboxConfig(id=sandbox_id, template=TEMPLATE, seed=crafted))
        except RunnerError:
            assert leftovers(runner, sandbox_id) == []
        else:
            sandboxes.ids.append(sandbox_id)
            home = runner.runtime_dir / sandbox_id / "layer" / "home"
            assert not (home / member.name.split("/")[-1]).exists()


def _hard_link(name: str, target: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.linkname = tarfile.LNKTYPE, target
    return member


def _device(name: str) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type, member.devmajor, member.devminor = tarfile.CHRTYPE, 1, 3
    return member


def test_fifos_sockets_and_devices_are_not_kept(limited_runner: Runner, sandboxes: Sandboxes,
                                                store: Path) -> None:
    """A FIFO nobody writes would hang a reader; capture never opens it, restore drops it."""
    runner = limited_runner
    a = sandboxes.start()
    runner.exec(a, "mkfifo ~/fifo /tmp/fifo && python3 -c \"import socket; "
                   "s = socket.socket(socket.AF_UNIX); s.bind('/home/user/sock')\" && "
                   "echo plain > ~/plain")
    archive = _snapshot(runner, a, store)
    b = sandboxes.start(seed=archive)
    assert runner.exec(b, "ls -A ~ /tmp").stdout.split() == ["/home/user:", "plain", "/tmp:"]


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
                        -runner._disk_bytes(runner.runtime_dir / a / "layer") + 1024 * 1024)
    dest = store / "over.tar"
    with pytest.raises(RunnerError, match="larger than a snapshot"):
        runner.snapshot(a, dest)
    assert not dest.exists()
    assert not runner.is_frozen(a)
