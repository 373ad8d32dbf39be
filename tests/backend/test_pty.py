"""PTY sessions through the official SDK: a real terminal in the sandbox, over a WebSocket.

The shell is the sandbox's (its user, its devpts, its cgroup); typing reaches it and its
echo comes back; a resize is what ``stty size`` then says; sessions end with the sandbox,
count against its limit, and belong to its organization only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from pulumi_leap0 import spec
from tests.backend.helpers import TEMPLATE, http, sdk
from tests.fixtures.backend import BackendServer


def read_until(conn: Any, marker: bytes, timeout: float = 15.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} in the terminal's output: {seen[-500:]!r}")
        try:
            seen += conn.websocket.recv(timeout=left)
        except TimeoutError:
            continue
    return seen


@pytest.fixture
def box(backend: BackendServer, api_key: str) -> Iterator[Any]:
    with sdk(backend, api_key) as leap0:
        sandbox = leap0.sandboxes.create(template_name=TEMPLATE,
                                         network_policy={"mode": "deny-all"})
        try:
            yield sandbox
        finally:
            leap0.sandboxes.delete(sandbox.id)


def test_a_shell_in_the_sandbox_echoes_resizes_and_ends(box: Any) -> None:
    sandbox = box
    session = sandbox.pty.create(session_id="main", cols=100, rows=30,
                               envs={"GREETING": "hi"})
    assert (session.id, session.cols, session.rows, session.active) == ("main", 100, 30, True)
    assert session.cwd == "/home/user" and session.envs == {"GREETING": "hi"}
    conn = sandbox.pty.connect("main")
    try:
        conn.send("echo $GREETING-$((6*7)); stty size; tty; id -un\n")
        out = read_until(conn, b"user\r\n")
        assert b"hi-42" in out and b"30 100" in out
        assert b"/dev/pts/" in out  # a pseudo-terminal of the sandbox's own devpts
        resized = sandbox.pty.resize("main", cols=132, rows=43)
        assert (resized.cols, resized.rows) == (132, 43)
        conn.send("stty size\n")
        assert b"43 132" in read_until(conn, b"43 132")
        # The shell is a process of the sandbox: an exec sees it.
        ps = sandbox.process.execute(command="ps -eo user,tty,comm").stdout
        assert any(line.split()[:1] == ["user"] and "pts/" in line and "bash" in line
                   for line in ps.splitlines()), ps
    finally:
        conn.close()
    assert [s.id for s in sandbox.pty.list()] == ["main"]
    assert sandbox.pty.get("main").rows == 43
    sandbox.pty.delete("main")
    assert sandbox.pty.list() == []
    assert "bash" not in sandbox.process.execute(command="ps -eo comm").stdout


def test_lazy_session_starts_on_connect_and_reconnects(box: Any) -> None:
    sandbox = box
    session = sandbox.pty.create(lazy_start=True, cwd="/tmp")
    assert session.id.startswith("pty-") and session.lazy_start and not session.active
    conn = sandbox.pty.connect(session.id)
    try:
        conn.send("pwd\n")
        assert b"/tmp\r\n" in read_until(conn, b"/tmp\r\n")
        assert sandbox.pty.get(session.id).active
        # A second connection takes over; the first is closed, the shell lives on.
        second = sandbox.pty.connect(session.id)
        try:
            second.send("echo again\n")
            assert b"again\r\n" in read_until(second, b"again\r\n")
        finally:
            second.close()
    finally:
        conn.close()


def test_sessions_end_with_the_sandbox_and_count_against_its_limit(
        backend: BackendServer, api_key: str) -> None:
    with sdk(backend, api_key) as leap0:
        sandbox = leap0.sandboxes.create(template_name=TEMPLATE,
                                         network_policy={"mode": "deny-all"})
        try:
            for n in range(spec.MAX_PTY_SESSIONS):
                sandbox.pty.create(session_id=f"s{n}", lazy_start=n > 1)
            with http(backend, api_key) as raw:
                over = raw.post(f"/v1/sandbox/{sandbox.id}/pty", json={})
                assert over.status_code == 409, over.text
                assert str(spec.MAX_PTY_SESSIONS) in over.json()["message"]
                dup = raw.post(f"/v1/sandbox/{sandbox.id}/pty", json={"id": "s0"})
                assert dup.status_code == 409
            conn = sandbox.pty.connect("s0")
            with http(backend, api_key) as raw:
                assert raw.post(f"/v1/sandbox/{sandbox.id}/stop").status_code == 200
            # The connection ends with the sandbox, and so do its sessions.
            with pytest.raises(ConnectionClosed):
                for _ in range(100):
                    conn.recv()
            with http(backend, api_key) as raw:
                assert raw.post(f"/v1/sandbox/{sandbox.id}/start").status_code == 200
            assert sandbox.pty.list() == []
            assert "bash" not in sandbox.process.execute(command="ps -eo comm").stdout
        finally:
            leap0.sandboxes.delete(sandbox.id)


def test_bad_input_is_a_400_naming_the_field(box: Any, backend: BackendServer,
                                            api_key: str) -> None:
    sandbox = box
    with http(backend, api_key) as raw:
        base = f"/v1/sandbox/{sandbox.id}/pty"
        for body, field in [({"cols": 0}, "cols"), ({"rows": 10**6}, "rows"),
                            ({"id": "../x"}, "id"), ({"cwd": "/no/such/dir"}, "cwd"),
                            ({"envs": {"1A": "x"}}, "envs")]:
            answer = raw.post(base, json=body)
            assert answer.status_code == 400, (body, answer.text)
            assert answer.json()["errors"][0]["field"].startswith(field), answer.text
        assert raw.get(f"{base}/nope").status_code == 404
        assert raw.delete(f"{base}/nope").status_code == 404
        assert raw.post(f"{base}/nope/resize", json={"cols": 1, "rows": 1}).status_code == 404
        assert raw.get(base).json() == {"items": []}  # nothing half-created


def test_another_organization_gets_404_everywhere(box: Any, backend: BackendServer) -> None:
    sandbox = box
    sandbox.pty.create(session_id="mine")
    stranger = backend.new_api_key()
    base = f"/v1/sandbox/{sandbox.id}/pty"
    with http(backend, stranger) as raw:
        assert raw.get(base).status_code == 404
        assert raw.post(base, json={}).status_code == 404
        assert raw.get(f"{base}/mine").status_code == 404
        assert raw.post(f"{base}/mine/resize", json={"cols": 9, "rows": 9}).status_code == 404
        assert raw.delete(f"{base}/mine").status_code == 404
    ws = backend.base_url.replace("http://", "ws://") + f"{base}/mine/connect"
    for headers, status in [({"Authorization": f"Bearer {stranger}"}, 404), ({}, 401),
                            ({"Authorization": "Bearer l0_wrong"}, 401)]:
        with pytest.raises(InvalidStatus) as refused:
            connect(ws, additional_headers=headers, open_timeout=10)
        assert refused.value.response.status_code == status
    assert sandbox.pty.get("mine").active  # untouched


def test_a_stalled_terminal_does_not_stall_another_organization(
        box: Any, backend: BackendServer, api_key: str) -> None:
    """A's sandbox paused under a connected terminal, and A typing into it as fast as it
    can: the input waits in A's own pipe and socket, never in a worker thread, so B's
    calls are answered as usual."""
    sandbox = box
    sandbox.pty.create(session_id="stuck")
    conn = sandbox.pty.connect("stuck")
    with http(backend, api_key) as raw:
        assert raw.post(f"/v1/sandbox/{sandbox.id}/pause").status_code in (200, 201)
    flood = b"x" * spec.MAX_PTY_INPUT_BYTES
    try:
        for _ in range(8):  # far more than the relay's pipe and buffers hold
            conn.websocket.send(flood)
        other = backend.new_api_key()
        with sdk(backend, other) as leap0:
            theirs = leap0.sandboxes.create(template_name=TEMPLATE,
                                            network_policy={"mode": "deny-all"})
            try:
                started = time.monotonic()
                for _ in range(5):
                    assert theirs.process.execute(command="echo ok").stdout == "ok\n"
                    session = theirs.pty.create()
                    theirs.pty.delete(session.id)
                assert time.monotonic() - started < 30
            finally:
                leap0.sandboxes.delete(theirs.id)
    finally:
        conn.close()


def _host_argvs() -> list[bytes]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes())
            except OSError:
                continue
    return found


def test_a_sessions_environment_is_on_no_host_command_line(box: Any) -> None:
    # The attack: any host user reads every process's argv. A session's envs (and the
    # sandbox's env_vars) once rode on the relay's `env -i NAME=value` command line.
    secret = "pty-secret-" + uuid.uuid4().hex
    box.pty.create(session_id="envs", envs={"TOKEN": secret})
    conn = box.pty.connect("envs")
    try:
        conn.send('printf "%s\\n" "${TOKEN#pty-secret-}" | rev\n')
        read_until(conn, secret.removeprefix("pty-secret-")[::-1].encode())
        assert not [argv for argv in _host_argvs() if secret.encode() in argv]
    finally:
        conn.close()
        box.pty.delete("envs")
