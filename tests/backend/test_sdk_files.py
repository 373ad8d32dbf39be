"""The filesystem calls beyond the basic seven, and the ``system/`` calls, through the
official ``leap0`` SDK against the real backend: what an SDK user's code gets from Leap0.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.backend.helpers import http
from tests.fixtures.backend import BackendServer


def _said(error: Any) -> str:
    return f"{error.message} {error.body}"


def _run(box: Any, command: str) -> str:
    result = box.process.execute(command=command, timeout=30)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return str(result.stdout)


def test_write_files_then_read_files(box: Any) -> None:
    fs = box.filesystem
    files = {"/home/user/a.txt": b"alpha\n", "/tmp/deep/er/b.bin": bytes(range(256)) * 4,
             "/home/user/empty": b"", "rel.txt": b"relative to the workdir"}
    fs.write_files_bytes(files=files)
    assert fs.read_files_bytes(paths=list(files)) == files
    assert _run(box, "cat /home/user/rel.txt") == "relative to the workdir"
    fs.write_files(files={"/home/user/a.txt": "replaced"})
    assert fs.read_files(paths=["/home/user/a.txt"]) == {"/home/user/a.txt": "replaced"}
    # Written by the sandbox user, with the usual mode; a replaced file keeps its own mode.
    _run(box, "chmod 600 /home/user/a.txt")
    fs.write_files(files={"/home/user/a.txt": "again"})
    assert _run(box, "stat -c '%U %a' /home/user/a.txt /tmp/deep/er/b.bin") == (
        "user 600\nuser 644\n")
    assert _run(box, "ls -a /home/user | grep -c leap0 || true") == "0\n"  # no stray temp


def test_batches_fail_whole_naming_the_file(box: Any, backend: BackendServer,
                                            api_key: str) -> None:
    from leap0 import Leap0Error

    fs = box.filesystem
    _run(box, "mkdir /home/user/dir")
    with pytest.raises(Leap0Error) as refused:
        fs.write_files_bytes(files={"/home/user/fine": b"x", "/home/user/dir": b"y"})
    assert refused.value.status_code == 400 and "files[1]" in _said(refused.value)
    assert not fs.exists(path="/home/user/fine")  # all or nothing
    with pytest.raises(Leap0Error) as missing:
        fs.read_files(paths=["/home/user/dir/../nothing", "/etc/hostname"])
    assert missing.value.status_code == 404 and "paths[0]" in _said(missing.value)
    with http(backend, api_key) as raw:
        answer = raw.post(f"/v1/sandbox/{box.id}/filesystem/write-files",
                          content=b"not multipart")
        assert answer.status_code == 400 and "multipart" in answer.text
        broken = raw.post(f"/v1/sandbox/{box.id}/filesystem/write-files",
                          headers={"content-type": "multipart/form-data; boundary=b"},
                          content=b"--b\r\nTrue--b--\r\n")
        assert broken.status_code == 400, broken.text
        assert broken.json()["errors"][0]["field"] == "body"


def test_set_permissions(box: Any) -> None:
    from leap0 import Leap0Error

    fs = box.filesystem
    fs.write_file(path="/home/user/script.sh", content="#!/bin/sh\necho ran\n")
    fs.set_permissions(path="/home/user/script.sh", mode="750")
    assert fs.stat(path="/home/user/script.sh").mode == "750"
    assert _run(box, "/home/user/script.sh") == "ran\n"
    fs.set_permissions(path="/home/user/script.sh", owner="user", group="user")
    with pytest.raises(Leap0Error) as denied:  # the sandbox user cannot give files away
        fs.set_permissions(path="/home/user/script.sh", owner="root")
    # 400: root is not mapped in the sandbox's user namespace (403 where it would be).
    assert denied.value.status_code in (400, 403) and "owner" in _said(denied.value)
    assert _run(box, "stat -c %U /home/user/script.sh") == "user\n"
    with pytest.raises(Leap0Error) as unknown:
        fs.set_permissions(path="/home/user/script.sh", group="no-such-group")
    assert unknown.value.status_code == 400 and "group" in _said(unknown.value)


def test_glob_grep_and_tree(box: Any) -> None:
    fs = box.filesystem
    fs.write_files(files={
        "/home/user/p/main.py": "import os\nprint('hello')\n",
        "/home/user/p/lib/util.py": "def hello():\n    return 'hello'\n",
        "/home/user/p/lib/notes.md": "hello in markdown\n",
        "/home/user/p/node_modules/x.py": "hello = 1\n",
    })
    assert fs.glob(path="/home/user/p", pattern="*.py", exclude=["node_modules"]) == [
        "/home/user/p/lib/util.py", "/home/user/p/main.py"]
    assert fs.glob(path="/home/user/p", pattern="lib/**/*.md") == ["/home/user/p/lib/notes.md"]
    matches = fs.grep(path="/home/user/p", pattern=r"hel+o\(", include="*.py")
    assert [(m.path, m.line, m.content) for m in matches] == [
        ("/home/user/p/lib/util.py", 1, "def hello():")]
    every = fs.grep(path="/home/user/p", pattern="hello", exclude=["node_modules"])
    assert {m.path for m in every} == {"/home/user/p/main.py", "/home/user/p/lib/util.py",
                                       "/home/user/p/lib/notes.md"}
    tree = fs.tree(path="/home/user/p", exclude=["node_modules"])
    shape = {e.name: sorted(c.name for c in e.children) for e in tree.items}
    assert shape == {"lib": ["notes.md", "util.py"], "main.py": []}
    assert [e.type for e in tree.items] == ["directory", "file"]
    shallow = fs.tree(path="/home/user/p", max_depth=1)
    assert all(not e.children for e in shallow.items)


def test_edit_file_and_edit_files(box: Any) -> None:
    from leap0 import FileEdit, Leap0Error

    fs = box.filesystem
    fs.write_files(files={"/home/user/a.py": "x = 1\ny = 1\n", "/home/user/b.py": "x = 2\n"})
    result = fs.edit_file(path="/home/user/a.py",
                          edits=[FileEdit(find="1", replace="10"), FileEdit(find="y", replace="z")])
    assert result.replacements == 3
    assert "-x = 1" in result.diff and "+z = 10" in result.diff
    assert fs.read_file(path="/home/user/a.py") == "x = 10\nz = 10\n"
    with pytest.raises(Leap0Error) as absent:  # all or nothing: the first edit is not kept
        fs.edit_file(path="/home/user/a.py",
                     edits=[FileEdit(find="x", replace="w"), FileEdit(find="nope", replace="")])
    assert absent.value.status_code == 400 and "edits[1].find" in _said(absent.value)
    assert fs.read_file(path="/home/user/a.py") == "x = 10\nz = 10\n"
    items = fs.edit_files(paths=["/home/user/a.py", "/home/user/b.py", "/home/user/none"],
                          find="x =", replace="X =")
    assert [(i.file, i.success) for i in items] == [
        ("/home/user/a.py", True), ("/home/user/b.py", True), ("/home/user/none", False)]
    assert fs.read_file(path="/home/user/b.py") == "X = 2\n"


def test_move_and_copy(box: Any) -> None:
    from leap0 import Leap0Error

    fs = box.filesystem
    fs.write_files(files={"/home/user/d/one": "1", "/home/user/d/sub/two": "2"})
    _run(box, "ln -s one /home/user/d/link")
    fs.copy(src_path="/home/user/d", dst_path="/home/user/d2", recursive=True)
    assert _run(box, "cd /home/user/d2 && cat one sub/two && readlink link") == "12one\n"
    with pytest.raises(Leap0Error) as needs_recursive:
        fs.copy(src_path="/home/user/d", dst_path="/home/user/d3")
    assert needs_recursive.value.status_code == 400
    with pytest.raises(Leap0Error) as exists:
        fs.copy(src_path="/home/user/d/one", dst_path="/home/user/d2/one")
    assert exists.value.status_code == 409
    fs.copy(src_path="/home/user/d/one", dst_path="/home/user/d2/one", overwrite=True)
    fs.move(src_path="/home/user/d2", dst_path="/home/user/d4")
    assert not fs.exists(path="/home/user/d2")
    # Across mounts (/home/user and /tmp are separate): a copy, then the source's removal.
    fs.move(src_path="/home/user/d4", dst_path="/tmp/d5")
    assert _run(box, "cat /tmp/d5/sub/two; test ! -e /home/user/d4 && echo gone") == "2gone\n"
    with pytest.raises(Leap0Error) as taken:
        fs.move(src_path="/home/user/d/one", dst_path="/tmp/d5/one")
    assert taken.value.status_code == 409
    fs.move(src_path="/home/user/d/one", dst_path="/tmp/d5/one", overwrite=True)
    assert fs.read_file(path="/tmp/d5/one") == "1"
    fs.move(src_path="/home/user/d/link", dst_path="/tmp/link")  # a symlink, as itself
    assert _run(box, "readlink /tmp/link; test ! -L /home/user/d/link && echo gone") == (
        "one\ngone\n")


def test_user_home_dir_and_workdir(box: Any, sdk_client: Any) -> None:
    assert box.get_user_home_dir() == "/home/user"
    assert box.get_workdir() == "/home/user"
    assert sdk_client.sandboxes.get_workdir(box.id) == _run(box, "pwd").strip()
