"""File calls work on the sandbox's view, as its user, and never reach host files."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import pytest

from pulumi_leap0 import spec
from pulumi_leap0.runner import Runner, files, readwindow, seccomp, sysutil
from pulumi_leap0.runner.errors import FileCallError

from .conftest import Sandboxes


def test_write_read_stat_list_delete(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    runner.files.write_file(a, "/home/user/dir/hello.txt", b"hi\n", mode=0o640)
    assert runner.files.read_file(a, "dir/hello.txt") == b"hi\n"
    assert runner.exec(a, "cat ~/dir/hello.txt; stat -c '%U %a' ~/dir/hello.txt").stdout == \
        "hi\nuser 640\n"
    info = runner.files.stat(a, "/home/user/dir/hello.txt")
    assert (info.name, info.size, info.mode, info.owner, info.is_dir) == \
        ("hello.txt", 3, "640", "user", False)
    runner.files.mkdir(a, "/home/user/dir/a/b", recursive=True)
    with pytest.raises(FileExistsError):
        runner.files.mkdir(a, "/home/user/dir/a")
    names = [i.path for i in runner.files.list_dir(a, "/home/user/dir", recursive=True)]
    assert names == ["/home/user/dir/a", "/home/user/dir/a/b", "/home/user/dir/hello.txt"]
    assert [i.name for i in runner.files.list_dir(a, "/home/user/dir", exclude=["*.txt"])] == ["a"]
    assert runner.files.exists(a, "/home/user/dir/a/b")
    with pytest.raises(OSError):
        runner.files.delete(a, "/home/user/dir")
    runner.files.delete(a, "/home/user/dir", recursive=True)
    assert not runner.files.exists(a, "/home/user/dir")
    with pytest.raises(FileNotFoundError):
        runner.files.read_file(a, "/home/user/dir/hello.txt")


def test_files_written_inside_are_readable(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    runner.exec(a, "printf data > /tmp/inside")
    assert runner.files.read_file(a, "/tmp/inside") == b"data"


def test_read_only_paths_stay_read_only(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    for content in (b"x", b"x" * (1 << 20), iter([b"x"] * 3)):  # with the request, or after
        with pytest.raises(OSError):
            runner.files.write_file(a, "/etc/evil", content)
    with pytest.raises(OSError):
        runner.files.delete(a, "/usr/bin/env")
    assert runner.exec(a, "test -e /usr/bin/env").exit_code == 0


def test_symlink_escapes_do_not_reach_the_host(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    host_secret = runner.root_dir / a / "state.json"  # a host file the sandbox must not see
    assert host_secret.exists()
    runner.exec(a, f"ln -s /root ~/x; ln -s /etc/shadow ~/s; ln -s ../../../../.. ~/up; "
                f"ln -s {host_secret} ~/state; ln -s /proc/1/root ~/pr")
    with pytest.raises(OSError):
        runner.files.read_file(a, "/home/user/x/.bashrc")
    # The sandbox's /etc/shadow is a nodev /dev/null: unreadable, or at most empty.
    with contextlib.suppress(PermissionError):
        assert runner.files.read_file(a, "/home/user/s") == b""
    with pytest.raises(FileNotFoundError):
        runner.files.read_file(a, "/home/user/state")
    with pytest.raises(FileNotFoundError):
        runner.files.read_file(a, f"/home/user/up{host_secret}")
    with pytest.raises(OSError):
        runner.files.read_file(a, "/home/user/pr/etc/hostname")
    listing = {i.name for i in runner.files.list_dir(a, "/home/user/up")}
    assert "work" not in listing and "root" in listing  # the sandbox's / (with empty /root)
    info = runner.files.stat(a, "/home/user/x")
    assert info.is_symlink and info.link_target == "/root"
    # Writing through a symlink to a read-only or hidden place fails; nothing lands on the host.
    runner.exec(a, "ln -s /tmp ~/t")
    runner.files.write_file(a, "/home/user/t/through", b"ok")
    assert runner.exec(a, "cat /tmp/through").stdout == "ok"
    with pytest.raises(FileCallError):
        runner.files.delete(a, "/")


# --- The file helper: a process of the sandbox ------------------------------------------------


def _helper_pids(runner: Runner, sandbox_id: str) -> set[int]:
    return runner._cgroups.pids(f"{runner._cg(sandbox_id)}/files")


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def test_the_file_helper_is_a_sandbox_process(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    record = runner._records.get(a)
    assert record is not None
    init, host_uid = record.init_pid, record.host_uid
    assert runner.files.exists(a, "/etc/hostname")
    pids = _helper_pids(runner, a)
    assert pids, "no file helper in the sandbox's cgroup"
    for pid in pids:
        status = _status(pid)
        assert status["Uid"].split() == [str(host_uid)] * 4, status["Uid"]
        assert status["Gid"].split() == [str(host_uid)] * 4, status["Gid"]
        assert status["Groups"] == ""
        for field in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert int(status[field], 16) == 0, (field, status[field])
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == ("2" if seccomp.AVAILABLE else "0")
        assert os.readlink(f"/proc/{pid}/ns/user") == os.readlink(f"/proc/{init}/ns/user")


def test_the_file_helper_ends_with_its_sandbox_and_its_runner(
    runner: Runner, sandboxes: Sandboxes
) -> None:
    a = sandboxes.start()
    runner.files.stat(a, "/")
    helper = runner._files._helpers[a]
    helper.control.close()  # what the helper sees when the backend stops
    assert helper.process.wait(timeout=5) == 0
    workers = _helper_pids(runner, a)
    deadline = time.monotonic() + 5
    while workers and time.monotonic() < deadline:
        time.sleep(0.05)
        workers = _helper_pids(runner, a)
    assert not workers, "workers outlived their runner"
    assert runner.files.stat(a, "/etc").is_dir  # a new helper takes over
    helper = runner._files._helpers[a]
    runner.destroy(a)
    assert helper.process.wait(timeout=5) != 0


def test_a_killed_helper_is_replaced(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    runner.files.write_file(a, "/tmp/x", b"1")
    runner._files._helpers[a].process.kill()
    runner._files._helpers[a].process.wait(timeout=5)
    assert runner.files.read_file(a, "/tmp/x") == b"1"


def test_calls_are_bounded_in_time(runner: Runner, sandboxes: Sandboxes,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    a = sandboxes.start()
    runner.files.stat(a, "/")
    monkeypatch.setattr(spec, "FILE_CALL_TIMEOUT_S", 0.05)
    started = time.monotonic()
    with pytest.raises(FileCallError, match="took longer than"):
        runner.files.list_dir(a, "/usr", recursive=True)
    assert time.monotonic() - started < 1.0
    monkeypatch.undo()
    assert runner.files.stat(a, "/etc").is_dir  # the helper serves on


def test_a_stuck_call_ends_at_its_deadline(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    runner.files.stat(a, "/")
    # A call whose request never comes: its worker waits, as one stuck in a read would,
    # until its own deadline (the call's timeout, rounded up, plus a second) ends it.
    ours, theirs = socket.socketpair()
    with ours, theirs:
        runner._files._helpers[a].hand_over(theirs, 0.5, time.monotonic() + 5)
        theirs.close()
        ours.settimeout(10)
        started = time.monotonic()
        assert ours.recv(1) == b""
        assert 1.0 < time.monotonic() - started < 4.0
    assert runner.files.stat(a, "/etc").is_dir


def test_deep_and_odd_trees(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    depth = spec.MAX_TREE_DEPTH + 10
    made = runner.exec(a, f"cd /tmp && for i in $(seq {depth}); do mkdir d && cd d; done; "
                       "touch \"$(printf '/tmp/\\377')\"; echo ok")
    assert made.stdout.endswith("ok\n"), made
    with pytest.raises(FileCallError, match="deeper than"):
        runner.files.list_dir(a, "/tmp", recursive=True)
    assert {i.name for i in runner.files.list_dir(a, "/tmp")} == {"d", "\ufffd"}
    with pytest.raises(FileCallError, match="deeper than"):
        runner.files.delete(a, "/tmp/d", recursive=True)
    # Two thousand components: made without recursion in the helper.
    long = "/tmp/" + "/".join(["e"] * 2000)
    runner.files.mkdir(a, long, recursive=True)
    assert runner.files.stat(a, long).is_dir
    assert runner.exec(a, f"test -d {long}").exit_code == 0


def test_only_regular_files_are_read_or_written(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    runner.exec(a, "mkfifo /tmp/fifo")
    for path in ("/tmp/fifo", "/dev/zero", "/dev/null"):
        with pytest.raises(FileCallError, match="not a regular file"):
            runner.files.read_file(a, path)
        with pytest.raises(FileCallError, match="not a regular file"):
            runner.files.write_file(a, path, b"x")
    with pytest.raises(IsADirectoryError):
        runner.files.read_file(a, "/tmp")


def test_windows_of_a_file(runner: Runner, sandboxes: Sandboxes) -> None:
    a = sandboxes.start()
    runner.files.write_file(a, "/tmp/lines", b"one\ntwo\nthree\nfour")
    assert b"".join(runner.files.open_file(a, "/tmp/lines", head=2)) == b"one\ntwo\n"
    assert b"".join(runner.files.open_file(a, "/tmp/lines", tail=2)) == b"three\nfour"
    window = runner.files.open_file(a, "/tmp/lines", offset=4, limit=10, tail=1)
    assert b"".join(window) == b"three\n"
    assert b"".join(runner.files.open_file(a, "/tmp/lines", offset=4, limit=7)) == b"two\nthr"
    # /proc files state no size: read whole, then windowed the same way.
    status = b"".join(runner.files.open_file(a, "/proc/1/status", head=1))
    assert status.startswith(b"Name:") and status.count(b"\n") == 1


# --- The window arithmetic, without a sandbox -------------------------------------------------

WINDOW_CASES = [
    (b"", {}, b""),
    (b"a\nb\nc\n", {"head": 0}, b""),
    (b"a\nb\nc\n", {"head": 2}, b"a\nb\n"),
    (b"a\nb\nc\n", {"tail": 1}, b"c\n"),
    (b"a\nb\nc\n", {"tail": 0}, b""),
    (b"a\nb\nc", {"tail": 2}, b"b\nc"),
    (b"a\nb\nc\n", {"tail": 9}, b"a\nb\nc\n"),
    (b"\n\n\n", {"tail": 2}, b"\n\n"),
    (b"abcdef", {"offset": 2, "limit": 3}, b"cde"),
    (b"abcdef", {"offset": 9}, b""),
    (b"x\ny\nz\n", {"offset": 2, "limit": 3, "head": 1}, b"y\n"),
]


@pytest.mark.parametrize(("content", "window", "expected"), WINDOW_CASES)
@pytest.mark.parametrize("sized", [True, False])
def test_read_window(tmp_path: Path, content: bytes, window: dict[str, int],
                     expected: bytes, sized: bool) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = len(content) if sized else 0  # 0: how /proc files present themselves
        got = b"".join(readwindow.read_window(
            fd, size, offset=window.get("offset", 0), limit=window.get("limit"),
            head=window.get("head"), tail=window.get("tail"), max_bytes=1 << 20))
    finally:
        os.close(fd)
    assert got == expected


def test_a_long_tail_is_found_backwards(tmp_path: Path) -> None:
    lines = [f"line {i}\n".encode() for i in range(200_000)]
    path = tmp_path / "log"
    path.write_bytes(b"".join(lines))
    fd = os.open(path, os.O_RDONLY)
    try:
        got = b"".join(readwindow.read_window(fd, path.stat().st_size, offset=0, limit=None,
                                         head=None, tail=70_000, max_bytes=1 << 30))
    finally:
        os.close(fd)
    assert got == b"".join(lines[-70_000:])


def test_a_file_over_the_read_limit_is_refused_before_any_byte(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(files.Refused, match="larger than 10 bytes"):
            next(readwindow.read_window(fd, 100, offset=0, limit=None, head=None, tail=None,
                                   max_bytes=10))
        assert b"".join(readwindow.read_window(fd, 100, offset=50, limit=10, head=None, tail=None,
                                          max_bytes=10)) == b"x" * 10
    finally:
        os.close(fd)


def test_exclude_patterns_mean_what_fnmatch_means() -> None:
    import fnmatch
    import random

    rng = random.Random(12)
    for _ in range(5000):
        patterns = ["".join(rng.choice("ab*?[]!/.") for _ in range(rng.randint(1, 6)))
                    for _ in range(rng.randint(1, 3))]
        rel = "".join(rng.choice("ab/.[]!") for _ in range(rng.randint(0, 8)))
        name = rel.rsplit("/", 1)[-1]
        expected = any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(rel, p) for p in patterns)
        assert files._matcher(patterns)(name, rel) == expected, (patterns, rel)


def test_openat2_takes_any_file_name() -> None:
    fd = sysutil.openat2(-100, "/", os.O_RDONLY | os.O_DIRECTORY)
    os.close(fd)
    with pytest.raises(FileNotFoundError):
        sysutil.openat2(-100, "/nonexistent-\udcff", os.O_RDONLY)


def test_a_sandbox_at_its_process_limit_is_answered_at_once(
    limited_runner: Runner, sandboxes: Sandboxes
) -> None:
    runner = limited_runner
    a = sandboxes.start()
    # A loop that takes every process slot that comes free, the exec's own included.
    runner.exec(a, "nohup sh -c 'while :; do sleep 300 & done' >/dev/null 2>&1 &", timeout=20)
    deadline = time.monotonic() + 10
    while runner.stats(a).pids < 512 and time.monotonic() < deadline:
        time.sleep(0.1)
    started = time.monotonic()
    with pytest.raises(BlockingIOError):
        runner.files.stat(a, "/")
    assert time.monotonic() - started < 5.0
