"""Attacks through a container image: the image is the tenant's, and the runner, as root on
the host, makes mount points and owners in its overlay before the sandbox starts.

The images are made here as directories (an unpacked image is one); the pull itself is
tested against real registries in ``tests/templates``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulumi_leap0.runner import Runner, RunnerError
from pulumi_leap0.runner.images import Image
from tests.runner.conftest import Sandboxes, leftovers, new_id

UID = 1234


def _image(root: Path, **links: str) -> Image:
    """A busybox root with ``links`` (path in the image -> absolute target) as symlinks."""
    (root / "bin").mkdir(parents=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in ("sh", "env", "id", "cat", "ls", "echo", "touch"):
        (root / "bin" / applet).symlink_to("busybox")
    for path, target in links.items():
        link = root / path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
    return Image(digest="sha256:" + "0" * 64, rootfs=root, config={}, user="app", uid=UID,
                 gid=UID, home="/home/app", workdir="/app", env={"PATH": "/bin"})


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[Path]:
    """A host directory no sandbox may touch."""
    path = tmp_path / "host-victim"
    path.mkdir(mode=0o755)
    yield path


def test_links_in_an_image_never_lead_the_runner_onto_the_host(
        runner: Runner, sandboxes: Sandboxes, tmp_path: Path, victim: Path) -> None:
    # Every place the runner makes a mount point or gives the user a directory, as a link
    # to the host: done naively (as root, following links) it would make directories on
    # the host and hand a host directory to the sandbox's uid.
    image = _image(tmp_path / "image", home=str(victim), app=str(victim / "app"),
                   run=str(victim), tmp=str(victim), etc=str(victim), var=str(victim),
                   proc=str(victim), dev=str(victim))
    sandbox_id = new_id()
    with contextlib.suppress(RunnerError):  # bubblewrap may well refuse such a root
        sandboxes.start(id=sandbox_id, template="attack", image=image)
    assert sorted(os.listdir(victim)) == []
    st = os.stat(victim)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, 0, 0o755)
    runner.destroy(sandbox_id)
    assert leftovers(runner, sandbox_id) == []


def test_the_image_is_shared_read_only_and_each_sandbox_writes_its_own(
        runner: Runner, sandboxes: Sandboxes, tmp_path: Path) -> None:
    image = _image(tmp_path / "image")
    (image.rootfs / "app").mkdir()
    (image.rootfs / "app" / "data").write_text("original\n")
    first = sandboxes.start(template="mine", image=image)
    second = sandboxes.start(template="mine", image=image)
    # The image's own files are not the user's to change, in place or through a link.
    refused = runner.exec(first, "echo x > /bin/busybox; echo $?; touch /new-top; echo $?")
    assert refused.stdout.split() == ["1", "1"], refused
    # The working directory is the user's; writes go to the sandbox's own upper layer.
    assert runner.exec(first, "id -u; echo mine > /app/mine; cat /app/mine").stdout == (
        f"{UID}\nmine\n")
    assert runner.exec(first, "echo changed > /app/data").exit_code != 0  # the image's
    assert runner.exec(second, "cat /app/data; ls /app").stdout == "original\ndata\n"
    assert sorted(os.listdir(image.rootfs / "app")) == ["data"]
    # No setuid program of an image gains anything: the overlay is nosuid.
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    overlays = [ln for ln in mounts if f"/{first}/root " in ln]
    assert overlays and "nosuid" in overlays[0] and "nodev" in overlays[0]
