"""Snapshots against a hostile tenant: its layer's links out of it (to the host's secrets, to
another sandbox), special files, and archives crafted to write outside the new layer.

Through the real runner, as root; see docs/security.md, "Snapshots"."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulumi_leap0.runner import Runner, RunnerError, SandboxConfig
from tests.runner.conftest import TEMPLATE, Sandboxes, leftovers, new_id, require_capability


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Runner:
    r = Runner(tmp_path_factory.mktemp("runner") / "sandboxes")
    require_capability(r, "bubblewrap", "namespaces", "freezer", "disk_limit",
                       "host_uid_per_sandbox")
    return r


@pytest.fixture
def sandboxes(runner: Runner) -> Iterator[Sandboxes]:
    boxes = Sandboxes(runner)
    try:
        yield boxes
    finally:
        boxes.cleanup()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    d = tmp_path / "snapshots"
    d.mkdir(mode=0o700)
    return d


def _snapshot(runner: Runner, sandbox_id: str, store: Path) -> Path:
    dest = store / f"{new_id()}.tar"
    runner.snapshots.take(sandbox_id, dest)
    return dest


def test_links_out_of_the_layer_are_kept_as_links_never_followed(
        runner: Runner, sandboxes: Sandboxes, store: Path) -> None:
    """The tenant points links at the host's secrets and at another sandbox's files: the
    archive holds the links, not what they point at, and restoring writes nothing there."""
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


def test_a_crafted_archive_cannot_write_through_its_links(runner: Runner,
                                                          sandboxes: Sandboxes,
                                                          tmp_path: Path) -> None:
    """Defence in depth, should an archive ever be made by something else than capture: a
    link followed by a file under it, absolute and ``..`` names, a hard link to a host
    file, and a device node are never written outside the new layer."""
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
            tar.addfile(member, fileobj=io.BytesIO(b"pwned"))
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


def test_fifos_sockets_and_devices_are_not_kept(runner: Runner, sandboxes: Sandboxes,
                                                store: Path) -> None:
    """A FIFO nobody writes would hang a reader; capture never opens it, restore drops it."""
    a = sandboxes.start()
    runner.exec(a, "mkfifo ~/fifo /tmp/fifo && python3 -c \"import socket; "
                   "s = socket.socket(socket.AF_UNIX); s.bind('/home/user/sock')\" && "
                   "echo plain > ~/plain")
    archive = _snapshot(runner, a, store)
    b = sandboxes.start(seed=archive)
    assert runner.exec(b, "ls -A ~ /tmp").stdout.split() == ["/home/user:", "plain", "/tmp:"]
