"""The API's other tenants, attacked through the API (issue #12, the API's part).

Each test is what a tenant with an API key of their own (or a stranger without one) would
do to the organizations sharing the server: flood its workers, hang a call, stream a body
nobody authenticated, ask for more memory than the host has, or send input that used to
answer 500. They run against the real backend over real HTTP; ``docs/security.md`` ("The
API: fairness, bounded work, and no 500s") says what each one proves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pulumi_leap0 import spec
from tests.backend.helpers import TEMPLATE, http
from tests.fixtures.backend import BackendServer, running_backend

#: How long another organization's create, get and execute may take while one floods.
ANSWER_BOUND_S = 2.0
FLOOD_CALLS = 96
#: Longer than a call waits for its organization's share, so the flood's extra calls are
#: refused while the admitted ones still run.
FLOOD_SLEEP_S = 12
DENY_ALL = {"mode": "deny-all"}
#: The small server's capacity and call timeout (``small_backend``).
SMALL_MEMORY_MIB = 2048
SMALL_CALL_TIMEOUT_S = 2


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _create(raw: httpx.Client, **body: Any) -> httpx.Response:
    return raw.post("/v1/sandbox/", json={"template_name": TEMPLATE, "network_policy": DENY_ALL,
                                          **body})


@contextlib.contextmanager
def _sandbox(backend: BackendServer, key: str, **body: Any) -> Iterator[str]:
    with http(backend, key) as raw:
        created = _create(raw, **body)
        assert created.status_code == 201, created.text
        try:
            yield created.json()["id"]
        finally:
            raw.delete(f"/v1/sandbox/{created.json()['id']}/")


# --- Fairness: one organization's flood ------------------------------------------------------


async def _slow_reader(port: int, key: str, sandbox_id: str) -> asyncio.StreamWriter:
    """A client that asks for 8 MB and reads only the status line, then nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"command": "head -c 8000000 /dev/zero | tr '\\0' x"}).encode()
    writer.write(
        f"POST /v1/sandbox/{sandbox_id}/process/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b"\r\n"), 30)
    return writer


async def _flood(backend: BackendServer, a_key: str, b_key: str,
                 a_box: str) -> tuple[dict[str, tuple[float, int]], list[httpx.Response]]:
    limits = httpx.Limits(max_connections=FLOOD_CALLS + 4, max_keepalive_connections=0)
    timings: dict[str, tuple[float, int]] = {}
    async with httpx.AsyncClient(base_url=backend.base_url, headers=_auth(a_key), timeout=120,
                                 limits=limits) as a, httpx.AsyncClient(
            base_url=backend.base_url, headers=_auth(b_key), timeout=120) as b:
        slow = await _slow_reader(backend.port, a_key, a_box)
        flood = [
            asyncio.create_task(a.post(
                f"/v1/sandbox/{a_box}/process/execute",
                json={"command": f"date +%s.%N; sleep {FLOOD_SLEEP_S}; date +%s.%N",
                      "timeout": FLOOD_SLEEP_S * 3}))
            for _ in range(FLOOD_CALLS)
        ]
        await asyncio.sleep(1.0)  # every flood call has reached the server

        async def timed(name: str, call: Any) -> httpx.Response:
            started = time.monotonic()
            answer: httpx.Response = await call
            timings[name] = (time.monotonic() - started, answer.status_code)
            return answer

        created = await timed("create", b.post(
            "/v1/sandbox/", json={"template_name": TEMPLATE, "network_policy": DENY_ALL}))
        b_box = created.json().get("id", "sbx-none")
        await timed("get", b.get(f"/v1/sandbox/{b_box}/"))
        await timed("execute", b.post(f"/v1/sandbox/{b_box}/process/execute",
                                      json={"command": "echo ok"}))
        await timed("list", b.get("/v1/sandboxes"))
        answers = await asyncio.gather(*flood)
        slow.close()
        await b.delete(f"/v1/sandbox/{b_box}/")
    return timings, answers


def _interval(answer: httpx.Response) -> tuple[float, float] | None:
    """When a flood call's command started and ended (None if it never ran)."""
    times = answer.json()["stdout"].split()
    return (float(times[0]), float(times[1])) if len(times) == 2 else None


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


def test_an_organization_flooding_the_api_does_not_stall_another(
    backend: BackendServer,
) -> None:
    a_key, b_key = backend.new_api_key(), backend.new_api_key()
    with _sandbox(backend, a_key) as a_box:
        timings, answers = asyncio.run(_flood(backend, a_key, b_key, a_box))
    # Organization B kept being served, each call within the bound.
    assert {name: code for name, (_, code) in timings.items()} == {
        "create": 201, "get": 200, "execute": 200, "list": 200}, timings
    slow = {name: round(took, 2) for name, (took, _) in timings.items() if took >= ANSWER_BOUND_S}
    assert not slow, f"organization B waited on A's flood: {slow} s"
    # Organization A got its share and no more; the rest was told to come back, not failed.
    codes = [answer.status_code for answer in answers]
    assert set(codes) <= {200, 429}, [a.text for a in answers if a.status_code not in (200, 429)]
    ran = [_interval(answer) for answer in answers if answer.status_code == 200]
    assert _most_at_once([r for r in ran if r]) <= spec.MAX_CALLS_PER_ORG, ran
    refused = [answer for answer in answers if answer.status_code == 429]
    assert len(refused) >= FLOOD_CALLS // 2, codes
    for answer in refused:
        assert int(answer.headers["retry-after"]) >= 1
        assert set(answer.json()) == {"message"}


def test_an_organization_can_stop_its_own_flood(backend: BackendServer) -> None:
    """Calls fill the calls share; a delete is a change, with a share of its own."""
    key = backend.new_api_key()

    async def flood_then_delete(box: str) -> tuple[float, int, list[int]]:
        async with httpx.AsyncClient(base_url=backend.base_url, headers=_auth(key),
                                     timeout=120) as a:
            calls = [asyncio.create_task(a.post(
                f"/v1/sandbox/{box}/process/execute",
                json={"command": "sleep 60", "timeout": 90}))
                for _ in range(spec.MAX_CALLS_PER_ORG)]
            await asyncio.sleep(1.0)
            started = time.monotonic()
            deleted = await a.delete(f"/v1/sandbox/{box}/")
            took = time.monotonic() - started
            ended = await asyncio.wait_for(asyncio.gather(*calls), 30)
        return took, deleted.status_code, [c.status_code for c in ended]

    with http(backend, key) as raw:
        box = _create(raw).json()["id"]
    took, status, calls = asyncio.run(flood_then_delete(box))
    assert status == 204 and took < ANSWER_BOUND_S, (status, took)
    assert all(code < 500 for code in calls), calls


# --- Bounded calls -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_backend() -> Iterator[BackendServer]:
    """A server for a small host: 2 GiB for sandboxes, file calls cut off after 2 s."""
    with running_backend(["--max-memory-mib", str(SMALL_MEMORY_MIB),
                          "--call-timeout", str(SMALL_CALL_TIMEOUT_S)]) as server:
        yield server


def _execute(raw: httpx.Client, box: str, command: str, **extra: Any) -> httpx.Response:
    return raw.post(f"/v1/sandbox/{box}/process/execute", json={"command": command, **extra})


def _open_for_writing(box: str, path: str) -> None:
    """Open a FIFO in the sandbox for writing, from the host, and close it: a reader blocked
    on it is released. Found through any process of the sandbox (its cgroup names it)."""
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and box in (proc / "cgroup").read_text():
                fd = os.open(f"{proc}/root{path}", os.O_RDWR | os.O_NONBLOCK)
                os.close(fd)
                return
    raise AssertionError(f"no process of {box} found")


def test_a_call_that_never_returns_is_answered_in_time_and_costs_only_its_org(
    small_backend: BackendServer,
) -> None:
    """Reading a FIFO nobody writes blocks its reader forever. The caller gets an answer
    within the server's call timeout; what still blocks counts against its own
    organization's share until it ends, and never against anyone else's."""
    backend = small_backend
    a_key, b_key = backend.new_api_key(), backend.new_api_key()
    share = spec.MAX_CALLS_PER_ORG
    with _sandbox(backend, a_key) as box, http(backend, a_key) as a, \
            _sandbox(backend, b_key) as b_box, http(backend, b_key) as b:
        assert _execute(a, box, "mkfifo /tmp/fifo").json()["exit_code"] == 0

        async def read_fifo() -> list[tuple[float, int]]:
            async with httpx.AsyncClient(base_url=backend.base_url, headers=_auth(a_key),
                                         timeout=SMALL_CALL_TIMEOUT_S + 10) as client:
                async def one() -> tuple[float, int]:
                    started = time.monotonic()
                    answer = await client.post(f"/v1/sandbox/{box}/filesystem/read-file",
                                               json={"path": "/tmp/fifo"})
                    return time.monotonic() - started, answer.status_code
                return await asyncio.gather(*(one() for _ in range(share)))

        try:
            answered = asyncio.run(read_fifo())
            assert all(took < SMALL_CALL_TIMEOUT_S + 3 for took, _ in answered), answered
            codes = {code for _, code in answered}
            assert codes in ({400}, {504}), answered
            started = time.monotonic()
            assert _execute(b, b_box, "echo ok").json()["stdout"] == "ok\n"
            assert time.monotonic() - started < ANSWER_BOUND_S
            if codes == {504}:
                # The blocked reads still hold every worker of A's share: A waits, then is
                # told to come back; B was not touched (above).
                over = a.post(f"/v1/sandbox/{box}/filesystem/exists", json={"path": "/tmp"})
                assert over.status_code == 429, over.text
                assert int(over.headers["retry-after"]) >= 1
        finally:
            _open_for_writing(box, "/tmp/fifo")
        # Once the reads end, the share is whole again.
        time.sleep(0.5)
        again = a.post(f"/v1/sandbox/{box}/filesystem/exists", json={"path": "/tmp"})
        assert again.status_code == 200 and again.json() == {"exists": True}, again.text


# --- Bodies: nobody reads what nobody authenticated -----------------------------------------

#: Every route that takes a body, and a route that takes none (a body is sent anyway).
BODY_ROUTES = [
    ("POST", "/v1/sandbox/"),
    ("POST", "/v1/sandbox/{id}/mounts"),
    ("PATCH", "/v1/sandbox/{id}/mounts/mnt-0000"),
    ("POST", "/v1/sandbox/{id}/process/execute"),
    ("POST", "/v1/sandbox/{id}/filesystem/ls"),
    ("POST", "/v1/sandbox/{id}/filesystem/stat"),
    ("POST", "/v1/sandbox/{id}/filesystem/mkdir"),
    ("POST", "/v1/sandbox/{id}/filesystem/write-file?path=/tmp/f"),
    ("POST", "/v1/sandbox/{id}/filesystem/read-file"),
    ("POST", "/v1/sandbox/{id}/filesystem/delete"),
    ("POST", "/v1/sandbox/{id}/filesystem/exists"),
    ("POST", "/v1/sandbox/{id}/git/clone"),
    ("POST", "/v1/sandbox/{id}/git/status"),
    ("POST", "/v1/sandbox/{id}/git/branches"),
    ("POST", "/v1/sandbox/{id}/git/diff-unstaged"),
    ("POST", "/v1/sandbox/{id}/git/diff-staged"),
    ("POST", "/v1/sandbox/{id}/git/diff"),
    ("POST", "/v1/sandbox/{id}/git/reset"),
    ("POST", "/v1/sandbox/{id}/git/log"),
    ("POST", "/v1/sandbox/{id}/git/show"),
    ("POST", "/v1/sandbox/{id}/git/create-branch"),
    ("POST", "/v1/sandbox/{id}/git/checkout-branch"),
    ("POST", "/v1/sandbox/{id}/git/delete-branch"),
    ("POST", "/v1/sandbox/{id}/git/add"),
    ("POST", "/v1/sandbox/{id}/git/commit"),
    ("POST", "/v1/sandbox/{id}/git/push"),
    ("POST", "/v1/sandbox/{id}/git/pull"),
    ("POST", "/v1/sandbox/{id}/pause"),
]


def _stalled_upload(port: int, method: str, path: str, key: str | None,
                    wait_s: float) -> int | None:
    """Send the head and one 64 KiB chunk of a chunked body, never the rest: the status the
    server answers with meanwhile, or None if it waits for the body."""
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(head.encode() + b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        try:
            status_line = sock.recv(64)
        except TimeoutError:
            return None
    return int(status_line.split()[1]) if status_line else None


def test_unauthenticated_streamed_bodies_are_refused_before_they_are_read(
    backend: BackendServer, api_key: str
) -> None:
    stranger = backend.new_api_key()
    with _sandbox(backend, api_key) as box:
        waited = []
        for method, template in BODY_ROUTES:
            path = template.format(id=box)
            refusals = [(None, 401), ("l0_not-a-key", 401)]
            if "{id}" in template:  # another organization's sandbox: not found, unread
                refusals.append((stranger, 404))
            for key, expected in refusals:
                status = _stalled_upload(backend.port, method, path, key, ANSWER_BOUND_S)
                if status != expected:
                    waited.append((method, template, key is not None, status))
        assert not waited, f"the server read a body before refusing its caller: {waited}"


def test_streamed_bodies_over_the_limit_still_answer_413(
    backend: BackendServer, api_key: str
) -> None:
    with _sandbox(backend, api_key) as box, http(backend, api_key) as raw:
        def chunks() -> Iterator[bytes]:
            for _ in range(17):
                yield b" " * 65536
        answer = raw.post(f"/v1/sandbox/{box}/process/execute", content=chunks(),
                          headers={"content-type": "application/json"})
        assert answer.status_code == 413, answer.text
        assert "MiB" in answer.json()["message"]
        # The connection and the sandbox are fine afterwards.
        assert _execute(raw, box, "echo ok").json()["stdout"] == "ok\n"


# --- Capacity: the host's memory is promised once ------------------------------------------


def _mem_total_mib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def test_sandboxes_never_promise_more_memory_than_the_host_has(backend: BackendServer) -> None:
    host = _mem_total_mib()
    promised, refused, made = 0, None, []
    try:
        while refused is None and promised <= host:
            with http(backend, backend.new_api_key()) as raw:
                for _ in range(spec.MAX_SANDBOXES_PER_ORG):
                    answer = _create(raw, memory=spec.MEMORY_MAX_MIB)
                    if answer.status_code != 201:
                        refused = answer
                        break
                    made.append((raw.headers["authorization"], answer.json()["id"]))
                    promised += spec.MEMORY_MAX_MIB
    finally:
        with http(backend) as raw:
            for auth, box in made:
                raw.delete(f"/v1/sandbox/{box}/", headers={"authorization": auth})
    assert promised <= host, f"{promised} MiB promised to sandboxes on a {host} MiB host"
    assert refused is not None and refused.status_code == 503, refused and refused.text
    assert "capacity" in refused.json()["message"]


@contextlib.contextmanager
def _org(backend: BackendServer) -> Iterator[httpx.Client]:
    with http(backend, backend.new_api_key()) as raw:
        try:
            yield raw
        finally:
            for item in raw.get("/v1/sandboxes").json()["items"]:
                raw.delete(f"/v1/sandbox/{item['id']}/")


def test_a_full_host_answers_503_to_every_organization_and_keeps_nothing(
    small_backend: BackendServer,
) -> None:
    with _org(small_backend) as a, _org(small_backend) as b, _org(small_backend) as c:
        assert _create(a, memory=1024).status_code == 201
        assert _create(b, memory=1024).status_code == 201
        refused = _create(c, memory=512)
        assert refused.status_code == 503, refused.text
        assert set(refused.json()) == {"message"}
        assert "capacity" in refused.json()["message"]
        assert c.get("/v1/sandboxes").json()["total_items"] == 0
        health = httpx.get(f"{small_backend.base_url}/healthz").json()["capacity"]
        assert health == {"memory_mib": SMALL_MEMORY_MIB}


def test_stopped_sandboxes_give_their_memory_back_and_start_waits_for_room(
    small_backend: BackendServer,
) -> None:
    with _org(small_backend) as a, _org(small_backend) as c:
        a_box = _create(a, memory=2048).json()["id"]
        assert a.post(f"/v1/sandbox/{a_box}/stop").status_code == 200
        c_box = _create(c, memory=512)
        assert c_box.status_code == 201, c_box.text
        refused = a.post(f"/v1/sandbox/{a_box}/start")
        assert refused.status_code == 503, refused.text
        assert a.get(f"/v1/sandbox/{a_box}/").json()["state"] == "stopped"
        assert c.delete(f"/v1/sandbox/{c_box.json()['id']}/").status_code == 204
        started = a.post(f"/v1/sandbox/{a_box}/start")
        assert started.status_code == 200 and started.json()["state"] == "running"


def test_paused_sandboxes_keep_their_memory(small_backend: BackendServer) -> None:
    with _org(small_backend) as a, _org(small_backend) as c:
        a_box = _create(a, memory=2048).json()["id"]
        assert a.post(f"/v1/sandbox/{a_box}/pause").status_code == 201
        assert _create(c, memory=512).status_code == 503


def test_concurrent_creates_of_many_organizations_never_overcommit(
    small_backend: BackendServer,
) -> None:
    keys = [small_backend.new_api_key() for _ in range(6)]

    async def create_all() -> list[httpx.Response]:
        async def one(key: str) -> httpx.Response:
            async with httpx.AsyncClient(base_url=small_backend.base_url, headers=_auth(key),
                                         timeout=60) as client:
                return await client.post("/v1/sandbox/", json={
                    "template_name": TEMPLATE, "memory": 1024, "network_policy": DENY_ALL})
        return await asyncio.gather(*(one(key) for key in keys))

    answers = asyncio.run(create_all())
    try:
        assert sorted(a.status_code for a in answers) == [201, 201, 503, 503, 503, 503], [
            a.text for a in answers]
    finally:
        for key, answer in zip(keys, answers, strict=True):
            if answer.status_code == 201:
                httpx.delete(f"{small_backend.base_url}/v1/sandbox/{answer.json()['id']}/",
                             headers=_auth(key))


# --- Input that used to answer 500 ----------------------------------------------------------

#: (what is sent to process/execute, the field the 400 must name)
EXECUTE_INPUT = [
    ({"command": "true", "envs": {"": "x"}}, "envs."),
    ({"command": "true", "envs": {"A=B": "x"}}, "envs.A=B"),
    ({"command": "true", "envs": {"A\0": "x"}}, "envs.A\0"),
    ({"command": "true", "envs": {"-u": "x"}}, "envs.-u"),
    ({"command": "true", "envs": {"--help": "x"}}, "envs.--help"),
    ({"command": "true", "envs": {"A": "x\0y"}}, "envs.A"),
    ({"command": "true", "envs": {"A": "x" * 200_000}}, "envs.A"),
    ({"command": "true", "envs": {f"V{i}": "" for i in range(60_000)}}, "envs"),
    ({"command": "x" * 900_000}, "command"),
    ({"command": "# " + "x" * 140_000}, "command"),
    ({"command": "echo \0"}, "command"),
    ({"command": "true", "cwd": "/tmp\0"}, "cwd"),
    ({"command": "true", "cwd": "/" + "a" * 200_000}, "cwd"),
]
#: (what is sent to POST /v1/sandbox/, the field the 400 must name)
CREATE_INPUT = [
    ({"env_vars": {f"V{i}": "" for i in range(60_000)}}, "env_vars"),
    ({"env_vars": {"BIG": "x" * 140_000}}, "env_vars.BIG"),
    ({"env_vars": {f"V{i}": "x" * 60_000 for i in range(14)}}, "env_vars"),
    ({"network_policy": {"mode": "custom", "transforms": [
        {"domain": "example.com", "inject_headers": {"x-a": "b\0c"}}]}},
     "network_policy.transforms[0].inject_headers.x-a"),
]
_MOUNT = {"type": "object-storage", "bucket": "assets", "mount_path": "/data",
          "endpoint": "http://127.0.0.1:9"}
#: (what is sent to POST /v1/sandbox/{id}/mounts, the field the 400 must name)
MOUNT_INPUT = [
    ({**_MOUNT, "mount_path": "/da\0ta"}, "mount_path"),
    ({**_MOUNT, "prefix": "a\0/"}, "prefix"),
    ({**_MOUNT, "endpoint": "http://127.0.0.1:9/\0x"}, "endpoint"),
    ({**_MOUNT, "access_key_id": "a\0", "secret_access_key": "b"}, "access_key_id"),
    ({**_MOUNT, "access_key_id": "a", "secret_access_key": "b\0"}, "secret_access_key"),
]


@pytest.fixture(scope="module")
def target(backend: BackendServer) -> Iterator[tuple[httpx.Client, str]]:
    key = backend.new_api_key()
    with _sandbox(backend, key) as box, http(backend, key) as raw:
        yield raw, box


def _assert_names(answer: httpx.Response, field: str) -> None:
    assert answer.status_code == 400, (field, answer.status_code, answer.text[:300])
    body = answer.json()
    assert body["message"] == "Invalid request"
    assert field in [error["field"] for error in body["errors"]], body


@pytest.mark.parametrize(("body", "field"), EXECUTE_INPUT,
                         ids=[f for _, f in EXECUTE_INPUT])
def test_execute_input_the_runner_cannot_take_is_a_400_naming_the_field(
    target: tuple[httpx.Client, str], body: dict[str, Any], field: str
) -> None:
    raw, box = target
    _assert_names(raw.post(f"/v1/sandbox/{box}/process/execute", json=body), field)


@pytest.mark.parametrize(("body", "field"), CREATE_INPUT, ids=[f for _, f in CREATE_INPUT])
def test_create_input_the_runner_cannot_take_is_a_400_naming_the_field(
    backend: BackendServer, body: dict[str, Any], field: str
) -> None:
    with _org(backend) as raw:
        _assert_names(raw.post("/v1/sandbox/", json={"template_name": TEMPLATE, **body}), field)


@pytest.mark.parametrize(("body", "field"), MOUNT_INPUT, ids=[f for _, f in MOUNT_INPUT])
def test_mount_input_the_runner_cannot_take_is_a_400_naming_the_field(
    target: tuple[httpx.Client, str], body: dict[str, Any], field: str
) -> None:
    raw, box = target
    _assert_names(raw.post(f"/v1/sandbox/{box}/mounts", json=body), field)


@pytest.mark.parametrize("route", [
    "/v1/sandbox/", "/v1/sandbox/{id}/process/execute", "/v1/sandbox/{id}/mounts",
    "/v1/sandbox/{id}/filesystem/ls",
])
@pytest.mark.parametrize("content", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    b'{"command": "echo \\ud800"}',
    b'{"command": NaN}',
], ids=["deep-list", "deep-object", "lone-surrogate", "nan"])
def test_json_no_parser_should_accept_is_a_400_on_the_body(
    target: tuple[httpx.Client, str], route: str, content: bytes
) -> None:
    raw, box = target
    answer = raw.post(route.format(id=box), content=content,
                      headers={"content-type": "application/json"})
    _assert_names(answer, "body")


@pytest.mark.parametrize("page", ["99999999999999999999", str(2**62), str(2**63)])
def test_a_page_past_every_sandbox_is_empty(
    target: tuple[httpx.Client, str], page: str
) -> None:
    raw, _ = target
    answer = raw.get("/v1/sandboxes", params={"page": page})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"items": [], "total_items": 1}
