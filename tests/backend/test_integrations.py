"""Two integrations published by others, run against the backend as their users run them
against Leap0: ``langchain-leap0`` (a Deep Agents sandbox backend) and ``leap0-adk`` (a
Google ADK plugin). No language model: their file tools are called directly, with the
arguments a model would give, in ``deny-all`` sandboxes.
"""

from __future__ import annotations

import asyncio
from typing import Any


def test_langchain_leap0_file_tools(sdk_client: Any, box: Any) -> None:
    from langchain_leap0 import Leap0Sandbox

    backend = Leap0Sandbox(client=sdk_client, sandbox=box, timeout=60)
    assert backend.id == box.id
    # The calls behind Deep Agents' write_file, read_file, edit_file, ls, glob and grep tools.
    written = backend.write("/home/user/app/main.py", "def greet():\n    return 'hi'\n")
    assert written.error is None, written.error
    assert "return 'hi'" in backend.read("/home/user/app/main.py")
    edited = backend.edit("/home/user/app/main.py", "'hi'", "'hello'")
    assert edited.error is None and edited.occurrences == 1
    assert box.filesystem.read_file(path="/home/user/app/main.py") == (
        "def greet():\n    return 'hello'\n")
    assert [i["path"] for i in backend.ls_info("/home/user/app")] == ["/home/user/app/main.py"]
    # Deep Agents' glob answers paths relative to where it searched.
    assert [i["path"] for i in backend.glob_info("**/*.py", "/home/user")] == ["app/main.py"]
    matches = backend.grep_raw("hello", "/home/user/app")
    assert isinstance(matches, list)
    assert [(m["path"], m["line"]) for m in matches] == [("/home/user/app/main.py", 2)]
    # Their upload and download go through write-file and read-file, with their errors.
    uploaded = backend.upload_files([("/home/user/data.bin", b"\x00\x01"), ("rel", b"x"),
                                     ("/usr/evil", b"x")])
    assert [u.error for u in uploaded] == [None, "invalid_path", "permission_denied"]
    downloaded = backend.download_files(["/home/user/data.bin", "/home/user/none",
                                         "/home/user/app"])
    assert [(d.content, d.error) for d in downloaded] == [
        (b"\x00\x01", None), (None, "file_not_found"), (None, "is_directory")]
    # deny-all: the sandbox reaches nothing, and says so as a command would.
    offline = backend.execute("python3 -c \"import socket; socket.create_connection("
                              "('1.1.1.1', 53), timeout=2)\"", timeout=30)
    assert offline.exit_code != 0


def test_leap0_adk_file_tools(sdk_client: Any, box: Any) -> None:
    from leap0_adk import Leap0Plugin

    plugin = Leap0Plugin(client=sdk_client, sandbox=box)
    tools = {tool.name: tool for tool in plugin.get_tools()}
    assert {"leap0_fs_read", "leap0_fs_write", "leap0_fs_list", "leap0_fs_delete"} <= set(tools)

    def run(name: str, **args: Any) -> dict[str, Any]:
        result: dict[str, Any] = asyncio.run(tools[name].run_async(args=args,
                                                                    tool_context=None))
        return result

    assert run("leap0_fs_write", path="/home/user/notes.txt", content="one\ntwo\nthree\n",
               permissions="640") == {"ok": True, "path": "/home/user/notes.txt"}
    assert run("leap0_fs_read", path="/home/user/notes.txt", tail=1)["content"] == "three\n"
    assert run("leap0_fs_read", path="/home/user/notes.txt", offset=4, limit=3)[
        "content"] == "two"
    listing = run("leap0_fs_list", path="/home/user")
    assert listing["ok"] is True
    assert [(i["name"], i["mode"]) for i in listing["listing"]["items"]] == [
        ("notes.txt", "640")]
    refused = run("leap0_fs_read", path="/home/user/notes.txt", head=1, tail=1)
    assert refused["ok"] is False
    missing = run("leap0_fs_read", path="/home/user/none")
    assert missing["ok"] is False and "404" in missing["error"]
    assert run("leap0_fs_delete", path="/home/user/notes.txt")["ok"] is True
    assert box.filesystem.exists(path="/home/user/notes.txt") is False
