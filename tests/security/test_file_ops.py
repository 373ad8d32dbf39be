"""The batch, search, edit, move and copy calls as the attack (issue #14).

A tenant drives ``write-files``, ``read-files``, ``set-permissions``, ``glob``, ``grep``,
``edit-file``, ``edit-files``, ``move``, ``copy`` and ``tree`` against its own sandbox to
reach the host or another sandbox, to make the backend do unbounded work, or to leave
half-made files behind. Each answer is a 4xx naming the input, nothing changes outside the
sandbox, and a sandbox of another organization is untouched throughout.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pulumi_leap0 import spec
from tests.backend.helpers import TEMPLATE, http
from tests.fixtures.backend import BackendServer
from tests.support import require

#: A file on the host that no sandbox may see: /root is not in a sandbox's view.
HOST_DIR = Path("/root")


@pytest.fixture
def raw(backend: BackendServer, api_key: str) -> Iterator[httpx.Client]:
    require(os.geteuid() == 0, "file calls as the sandbox user need a root runner")
    with http(backend, api_key) as client:
        yield client


def _create(client: httpx.Client, **body: object) -> str:
    created = client.post("/v1/sandbox/", json={"template_name": TEMPLATE,
                                                "network_policy": {"mode": "deny-all"}, **body})
    assert created.status_code == 201, created.text
    sandbox_id: str = created.json()["id"]
    return sandbox_id


@pytest.fixture
def box(raw: httpx.Client) -> Iterator[str]:
    sandbox_id = _create(raw)
    try:
        yield sandbox_id
    finally:
        raw.delete(f"/v1/sandbox/{sandbox_id}/")


@pytest.fixture
def neighbour(backend: BackendServer) -> Iterator[tuple[httpx.Client, str]]:
    """Another organization's sandbox, with a file that must stay as it is."""
    with http(backend, backend.new_api_key("neighbour")) as other:
        sandbox_id = _create(other)
        try:
            written = other.post(f"/v1/sandbox/{sandbox_id}/filesystem/write-file",
                                 params={"path": "/home/user/mine"}, content=b"untouched")
            assert written.status_code == 204, written.text
            yield other, sandbox_id
            read = other.post(f"/v1/sandbox/{sandbox_id}/filesystem/read-file",
                              json={"path": "/home/user/mine"})
            assert read.content == b"untouched"
            listing = other.post(f"/v1/sandbox/{sandbox_id}/filesystem/ls",
                                 json={"path": "/home/user"})
            assert [i["name"] for i in listing.json()["items"]] == ["mine"]
        finally:
            other.delete(f"/v1/sandbox/{sandbox_id}/")


@pytest.fixture
def host_marker() -> Iterator[Path]:
    marker = HOST_DIR / f".leap0-marker-{secrets.token_hex(4)}"
    marker.write_text("host")
    before = set(os.listdir(HOST_DIR))
    try:
        yield marker
        assert marker.read_text() == "host"
        assert set(os.listdir(HOST_DIR)) == before, "a file call made something on the host"
    finally:
        marker.unlink(missing_ok=True)


def _fs(raw: httpx.Client, box: str, call: str, **kwargs: object) -> httpx.Response:
    return raw.post(f"/v1/sandbox/{box}/filesystem/{call}", **kwargs)  # type: ignore[arg-type]


def _exec(raw: httpx.Client, box: str, command: str) -> str:
    answer = raw.post(f"/v1/sandbox/{box}/process/execute",
                      json={"command": command, "timeout": 60})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["stdout"])


def _refused(answer: httpx.Response, what: str, field: str | None = None) -> None:
    assert 400 <= answer.status_code < 500, f"{what}: {answer.status_code} {answer.text[:300]}"
    body = answer.json()
    assert body["message"], what
    if field is not None:
        said = answer.text
        assert field in said, (what, body)


def _every_call(raw: httpx.Client, box: str, path: str) -> list[tuple[str, httpx.Response]]:
    """Each new call aimed at ``path``, in each of its path inputs."""
    here = "/home/user/here"
    return [
        ("write-files", _fs(raw, box, "write-files", files=[(path, b"x")])),
        ("read-files", _fs(raw, box, "read-files", json={"paths": [here, path]})),
        ("set-permissions", _fs(raw, box, "set-permissions", json={"path": path, "mode": "777"})),
        ("glob", _fs(raw, box, "glob", json={"path": path, "pattern": "*"})),
        ("grep", _fs(raw, box, "grep", json={"path": path, "pattern": "host"})),
        ("tree", _fs(raw, box, "tree", json={"path": path})),
        ("edit-file", _fs(raw, box, "edit-file", json={"path": path,
                                                      "edits": [{"find": "host"}]})),
        ("move from", _fs(raw, box, "move", json={"src_path": path, "dst_path": "/tmp/got"})),
        ("move onto", _fs(raw, box, "move", json={"src_path": here, "dst_path": path,
                                                 "overwrite": True})),
        ("copy from", _fs(raw, box, "copy", json={"src_path": path, "dst_path": "/tmp/got",
                                                 "recursive": True})),
        ("copy onto", _fs(raw, box, "copy", json={"src_path": here, "dst_path": path,
                                                 "overwrite": True})),
    ]


def test_no_call_reaches_outside_the_sandbox(
    raw: httpx.Client, box: str, host_marker: Path, neighbour: tuple[httpx.Client, str]
) -> None:
    _, other = neighbour
    _exec(raw, box, "echo here > ~/here; ln -s /proc/1/root ~/pr; "
          f"ln -s /root/{host_marker.name} ~/abs; ln -s ../../../../../root ~/up")
    escapes = [
        f"/home/user/pr/root/{host_marker.name}",  # a magic link: refused
        f"/proc/1/root/root/{host_marker.name}",
        f"/proc/self/root/root/{host_marker.name}",
        f"/../../../../root/{host_marker.name}",  # ".." stops at the sandbox's "/"
        f"/home/user/up/{host_marker.name}",
        f"/run/leap0/../../root/{host_marker.name}",
    ]
    for path in escapes:
        _exec(raw, box, "echo here > ~/here")
        for what, answer in _every_call(raw, box, path):
            if what in ("write-files", "move onto", "copy onto", "set-permissions") and (
                    answer.status_code < 300):
                # Allowed only where the path is the sandbox's own (its /root is a tmpfs
                # or refused): the host marker's checks after the test say it stayed out.
                continue
            _refused(answer, f"{what} {path}")
    # An absolute symlink resolves inside the sandbox: there is nothing of the host there.
    for call, body in (("read-files", {"paths": ["/home/user/abs"]}),
                       ("grep", {"path": "/home/user/abs", "pattern": "host"}),
                       ("copy", {"src_path": "/home/user/abs", "dst_path": "/tmp/got"})):
        assert _fs(raw, box, call, json=body).status_code == 404, call
    # Nothing came back from the host, and the other sandbox's ids are not reachable.
    assert "host" not in _exec(raw, box, "cat /tmp/got 2>/dev/null; true")
    for what, answer in _every_call(raw, other, "/home/user/mine"):
        assert answer.status_code == 404, (what, answer.status_code, answer.text[:200])


def test_read_only_paths_stay_as_they_are(raw: httpx.Client, box: str) -> None:
    before = _exec(raw, box, "md5sum /usr/bin/env /etc/passwd; stat -c %a /usr/bin/env")
    cases = [
        ("edit-file on /usr", _fs(raw, box, "edit-file", json={
            "path": "/usr/bin/env", "edits": [{"find": "ELF", "replace": "ELG"}]})),
        ("edit-file on a read-only bind", _fs(raw, box, "edit-file", json={
            "path": "/etc/passwd", "edits": [{"find": "root", "replace": "toor"}]})),
        ("set-permissions on /usr", _fs(raw, box, "set-permissions", json={
            "path": "/usr/bin/env", "mode": "4777"})),
        ("write-files on /usr", _fs(raw, box, "write-files", files=[("/usr/bin/env", b"x")])),
        ("move out of /usr", _fs(raw, box, "move", json={"src_path": "/usr/bin/env",
                                                        "dst_path": "/tmp/env"})),
        ("move onto /usr", _fs(raw, box, "move", json={"src_path": "/etc/hostname",
                                                      "dst_path": "/usr/bin/env",
                                                      "overwrite": True})),
        ("copy onto /usr", _fs(raw, box, "copy", json={"src_path": "/etc/hostname",
                                                      "dst_path": "/usr/bin/env",
                                                      "overwrite": True})),
    ]
    for what, answer in cases:
        _refused(answer, what)
    edits = _fs(raw, box, "edit-files", json={"files": ["/usr/bin/env", "/etc/passwd"],
                                              "find": "root", "replace": "toor"})
    assert edits.status_code == 200, edits.text
    assert [i["success"] for i in edits.json()["items"]] == [False, False]
    assert _exec(raw, box, "md5sum /usr/bin/env /etc/passwd; stat -c %a /usr/bin/env") == before
    assert _exec(raw, box, "ls -a /tmp /usr/bin | grep -c leap0 || true") == "0\n"


def test_huge_batches_are_refused_before_any_work(raw: httpx.Client, box: str) -> None:
    many = spec.MAX_BATCH_FILES + 1
    written = _fs(raw, box, "write-files",
                  files=[(f"/tmp/b/{i}", b"x") for i in range(many)])
    _refused(written, "write-files over the batch")
    assert _exec(raw, box, "ls /tmp/b 2>/dev/null | wc -l") == "0\n"
    too_big = _fs(raw, box, "write-files", files=[
        ("/tmp/big1", b"x" * (spec.MAX_WRITE_FILE_BYTES // 2 + 1)),
        ("/tmp/big2", b"x" * (spec.MAX_WRITE_FILE_BYTES // 2 + 1))])
    assert too_big.status_code == 413, too_big.text
    _refused(_fs(raw, box, "read-files", json={"paths": ["/etc/hostname"] * many}),
             "read-files over the batch", "paths")
    _refused(_fs(raw, box, "edit-files", json={"files": ["/tmp/x"] * many, "find": "a"}),
             "edit-files over the batch", "files")
    _refused(_fs(raw, box, "edit-file", json={
        "path": "/tmp/x", "edits": [{"find": "a"}] * (spec.MAX_EDITS + 1)}),
        "edit-file over the edits", "edits")
    # More bytes in all than one read-files answers: refused before the first byte.
    _exec(raw, box, f"truncate -s {spec.MAX_READ_FILES_BYTES // 2 + 1} /tmp/sparse")
    _refused(_fs(raw, box, "read-files", json={"paths": ["/tmp/sparse", "/tmp/sparse"]}),
             "read-files over the bytes", "paths")


def test_grep_never_reads_a_device_or_a_fifo(raw: httpx.Client, box: str) -> None:
    _exec(raw, box, "mkdir /tmp/g; mkfifo /tmp/g/fifo; echo needle > /tmp/g/file; "
          "ln -s /dev/zero /tmp/g/zero")
    started = time.monotonic()
    for path in ("/dev/zero", "/tmp/g/fifo", "/tmp/g/zero"):
        _refused(_fs(raw, box, "grep", json={"path": path, "pattern": "x"}, timeout=15),
                 f"grep {path}", "path")
        _refused(_fs(raw, box, "read-files", json={"paths": [path]}, timeout=15),
                 f"read-files {path}", "paths[0]")
        _refused(_fs(raw, box, "copy", json={"src_path": path, "dst_path": "/tmp/c"},
                     timeout=15), f"copy {path}", "src_path")
    found = _fs(raw, box, "grep", json={"path": "/tmp/g", "pattern": "needle"}, timeout=15)
    assert found.status_code == 200, found.text
    assert [m["path"] for m in found.json()["items"]] == ["/tmp/g/file"]
    assert time.monotonic() - started < 15


def test_a_catastrophic_regex_ends_at_its_deadline_and_stalls_nobody(
    raw: httpx.Client, box: str, neighbour: tuple[httpx.Client, str]
) -> None:
    other_client, other = neighbour
    _exec(raw, box, "printf '%050d!\\n' 0 | tr 0 a > /tmp/evil")
    started = time.monotonic()
    answer = _fs(raw, box, "grep", json={"path": "/tmp/evil", "pattern": "(a+)+$"},
                 timeout=spec.FILE_SEARCH_TIMEOUT_S + 20)
    took = time.monotonic() - started
    _refused(answer, "a backtracking pattern", "path")
    assert spec.FILE_SEARCH_TIMEOUT_S - 1 <= took < spec.FILE_SEARCH_TIMEOUT_S + 10, took
    # The other organization's calls were not held up, and this sandbox answers again.
    started = time.monotonic()
    read = other_client.post(f"/v1/sandbox/{other}/filesystem/read-file",
                             json={"path": "/home/user/mine"})
    assert read.status_code == 200 and time.monotonic() - started < 5
    assert _fs(raw, box, "grep", json={"path": "/tmp/evil", "pattern": "!"}).status_code == 200
    _refused(_fs(raw, box, "grep", json={"path": "/tmp", "pattern": "(unclosed"}),
             "an invalid pattern", "pattern")
    _refused(_fs(raw, box, "grep", json={"path": "/tmp",
                                         "pattern": "a" * (spec.MAX_GREP_PATTERN_CHARS + 1)}),
             "a pattern too long", "pattern")


def test_a_glob_that_explodes_is_bounded(raw: httpx.Client, box: str) -> None:
    # 20,000 entries, and patterns built to make a naive matcher backtrack.
    _exec(raw, box, "mkdir -p /tmp/t && cd /tmp/t && for d in $(seq 40); do mkdir $d; "
          "(cd $d && seq 500 | sed 's/^/aaaaaaaaaaaaaaaaaaaa/' | xargs touch); done")
    patterns = ["**/**/**/**/**/**/**/**/**/**/*a*a*a*a*a*a*a*a*a*a*b",
                "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b"]
    for pattern in patterns:
        started = time.monotonic()
        answer = _fs(raw, box, "glob", json={"path": "/tmp/t", "pattern": pattern},
                     timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["items"] == []
        assert time.monotonic() - started < spec.FILE_SEARCH_TIMEOUT_S
    every = _fs(raw, box, "glob", json={"path": "/tmp/t", "pattern": "*"}, timeout=30)
    _refused(every, "a glob with too many results", "pattern")
    tree = _fs(raw, box, "tree", json={"path": "/tmp/t", "max_depth": 1})
    assert tree.status_code == 200 and len(tree.json()["items"]) == 40
    _refused(_fs(raw, box, "tree", json={"path": "/tmp", "max_depth": spec.MAX_TREE_DEPTH + 1}),
             "a tree too deep", "max_depth")


def test_a_copy_bigger_than_the_disk_leaves_nothing(raw: httpx.Client) -> None:
    sandbox_id = _create(raw, memory=2048)
    try:
        free_kib = int(_exec(raw, sandbox_id, "df -k --output=avail /tmp | tail -1"))
        size_mib = free_kib * 6 // 10 // 1024
        _exec(raw, sandbox_id, f"mkdir -p /tmp/src/sub && head -c {size_mib // 2}M /dev/urandom"
              f" > /tmp/src/a && head -c {size_mib - size_mib // 2}M /dev/urandom"
              " > /tmp/src/sub/b")
        before = _exec(raw, sandbox_id, "df -k --output=used /tmp | tail -1")
        answer = _fs(raw, sandbox_id, "copy", json={"src_path": "/tmp/src",
                                                    "dst_path": "/tmp/dst", "recursive": True},
                     timeout=60)
        _refused(answer, "a copy bigger than the disk")
        assert "does not fit" in answer.text
        assert _exec(raw, sandbox_id, "ls -a /tmp") == ".\n..\nsrc\n"
        assert _exec(raw, sandbox_id, "df -k --output=used /tmp | tail -1") == before
        # The same through move across mounts (a copy, then the removal): nothing moved.
        moved = _fs(raw, sandbox_id, "move", json={"src_path": "/tmp/src",
                                                   "dst_path": "/home/user/src"}, timeout=60)
        if moved.status_code != 204:  # /home/user may share the disk: then it is refused
            _refused(moved, "a move bigger than the disk")
            assert _exec(raw, sandbox_id, "ls -a /home/user | grep -c leap0 || true") == "0\n"
            assert _exec(raw, sandbox_id, "ls /tmp/src") == "a\nsub\n"
    finally:
        raw.delete(f"/v1/sandbox/{sandbox_id}/")


def test_copy_and_move_into_themselves_are_refused(raw: httpx.Client, box: str) -> None:
    _exec(raw, box, "mkdir -p /tmp/loop/in && echo x > /tmp/loop/in/f")
    for call in ("copy", "move"):
        _refused(_fs(raw, box, call, json={"src_path": "/tmp/loop", "dst_path": "/tmp/loop/in/x",
                                           "recursive": True}), f"{call} into itself",
                 "dst_path")
    assert _exec(raw, box, "find /tmp/loop | sort") == "/tmp/loop\n/tmp/loop/in\n/tmp/loop/in/f\n"
