"""File helpers work on the sandbox's view and never reach host files."""

from __future__ import annotations

import contextlib

import pytest

from pulumi_leap0.runner import Runner

from .conftest import Sandboxes


def test_write_read_stat_list_delete(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    runner.write_file(a, "/home/user/dir/hello.txt", b"hi\n", mode=0o640)
    assert runner.read_file(a, "dir/hello.txt") == b"hi\n"
    assert runner.exec(a, "cat ~/dir/hello.txt; stat -c '%U %a' ~/dir/hello.txt").stdout == \
        "hi\nuser 640\n"
    info = runner.stat(a, "/home/user/dir/hello.txt")
    assert (info.name, info.size, info.mode, info.owner, info.is_dir) == \
        ("hello.txt", 3, "640", "user", False)
    runner.mkdir(a, "/home/user/dir/a/b", recursive=True)
    with pytest.raises(FileExistsError):
        runner.mkdir(a, "/home/user/dir/a")
    names = [i.path for i in runner.list_dir(a, "/home/user/dir", recursive=True)]
    assert names == ["/home/user/dir/a", "/home/user/dir/a/b", "/home/user/dir/hello.txt"]
    assert [i.name for i in runner.list_dir(a, "/home/user/dir", exclude=["*.txt"])] == ["a"]
    assert runner.exists(a, "/home/user/dir/a/b")
    with pytest.raises(OSError):
        runner.delete(a, "/home/user/dir")
    runner.delete(a, "/home/user/dir", recursive=True)
    assert not runner.exists(a, "/home/user/dir")
    with pytest.raises(FileNotFoundError):
        runner.read_file(a, "/home/user/dir/hello.txt")


def test_files_written_inside_are_readable(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    runner.exec(a, "printf data > /tmp/inside")
    assert runner.read_file(a, "/tmp/inside") == b"data"


def test_read_only_paths_stay_read_only(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    with pytest.raises(OSError):
        runner.write_file(a, "/etc/evil", b"x")
    with pytest.raises(OSError):
        runner.delete(a, "/usr/bin/env")
    assert runner.exec(a, "test -e /usr/bin/env").exit_code == 0


def test_symlink_escapes_do_not_reach_the_host(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    host_secret = runner.root_dir / a / "state.json"  # a host file the sandbox must not see
    assert host_secret.exists()
    runner.exec(a, f"ln -s /root ~/x; ln -s /etc/shadow ~/s; ln -s ../../../../.. ~/up; "
                f"ln -s {host_secret} ~/state; ln -s /proc/1/root ~/pr")
    with pytest.raises(OSError):
        runner.read_file(a, "/home/user/x/.bashrc")
    # The sandbox's /etc/shadow is a nodev /dev/null: unreadable, or at most empty.
    with contextlib.suppress(PermissionError):
        assert runner.read_file(a, "/home/user/s") == b""
    with pytest.raises(FileNotFoundError):
        runner.read_file(a, "/home/user/state")
    with pytest.raises(FileNotFoundError):
        runner.read_file(a, f"/home/user/up{host_secret}")
    with pytest.raises(OSError):
        runner.read_file(a, "/home/user/pr/etc/hostname")
    listing = {i.name for i in runner.list_dir(a, "/home/user/up")}
    assert "work" not in listing and "root" in listing  # the sandbox's / (with empty /root)
    info = runner.stat(a, "/home/user/x")
    assert info.is_symlink and info.link_target == "/root"
    # Writing through a symlink to a read-only or hidden place fails; nothing lands on the host.
    runner.exec(a, "ln -s /tmp ~/t")
    runner.write_file(a, "/home/user/t/through", b"ok")
    assert runner.exec(a, "cat /tmp/through").stdout == "ok"
    with pytest.raises(ValueError):
        runner.delete(a, "/")
