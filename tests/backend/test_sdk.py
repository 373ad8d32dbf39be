"""The official ``leap0`` SDK drives the reference backend over real HTTP.

If the SDK cannot tell the backend from the service, these calls behave as they would
against Leap0: same paths, same status codes, same bodies.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.backend.helpers import TEMPLATE, http, sdk
from tests.fixtures.backend import BackendServer

FULL_REQUEST: dict[str, Any] = {
    "template_name": TEMPLATE,
    "vcpu": 2,
    "memory": 1536,
    "timeout": 600,
    "auto_pause": True,
    "env_vars": {"GREETING": "hello", "STAGE": "test"},
    "network_policy": {
        "mode": "custom",
        "allow_domains": ["Example.com", "*.pypi.org"],
        "allow_cidrs": ["10.1.2.3/8"],
        "transforms": [
            {
                "domain": "api.example.com",
                "inject_headers": {"Authorization": "Bearer very-secret"},
                "strip_headers": ["Cookie"],
            }
        ],
    },
}


def test_create_with_every_field_then_get_and_delete(backend: BackendServer, api_key: str) -> None:
    from leap0 import Leap0NotFoundError

    with sdk(backend, api_key) as leap0:
        box = leap0.sandboxes.create(**FULL_REQUEST)
        try:
            assert box.id.startswith("sbx-")
            assert (box.template_id, box.vcpu, box.memory, box.timeout) == (TEMPLATE, 2, 1536, 600)
            assert box.auto_pause is True
            assert box.state == "running"
            assert box.disk >= 1
            assert box.created_at.endswith("Z")
            policy = box.network_policy
            assert policy["mode"] == "custom"
            assert policy["allow_domains"] == ["*.pypi.org", "example.com"]  # normalized
            assert policy["allow_cidrs"] == ["10.0.0.0/8"]
            # Injected header values are credentials: the name stays, the value never leaves.
            assert policy["transforms"][0]["inject_headers"] == {"authorization": ""}

            status = leap0.sandboxes.get(box.id)
            assert (status.id, status.state, status.vcpu, status.memory) == (
                box.id, "running", 2, 1536,
            )
            assert status.created_at == box.created_at
            # The status response carries the policy too (the provider's refresh needs it).
            with http(backend, api_key) as raw:
                body = raw.get(f"/v1/sandbox/{box.id}").json()
            assert body["network_policy"]["allow_domains"] == ["*.pypi.org", "example.com"]
            assert "very-secret" not in str(body)
            assert "env_vars" not in body and "hello" not in str(body)
        finally:
            leap0.sandboxes.delete(box.id)
        with pytest.raises(Leap0NotFoundError):
            leap0.sandboxes.get(box.id)
        with pytest.raises(Leap0NotFoundError):
            leap0.sandboxes.delete(box.id)


def test_defaults_are_filled_in(backend: BackendServer, api_key: str) -> None:
    with http(backend, api_key) as raw:
        created = raw.post("/v1/sandbox/", json={"template_name": TEMPLATE})
        assert created.status_code == 201, created.text
        body = created.json()
        raw.delete(f"/v1/sandbox/{body['id']}/")
    assert (body["vcpu"], body["memory"], body["timeout"], body["auto_pause"]) == (
        1, 1024, 300, False,
    )
    assert body["network_policy"] == {
        "mode": "allow-all", "allow_domains": [], "allow_cidrs": [], "transforms": [],
    }
    assert body["mounts"] == []


def test_list_filters_sorts_and_pages(backend: BackendServer, api_key: str) -> None:
    with sdk(backend, api_key) as leap0:
        boxes = [leap0.sandboxes.create(template_name=TEMPLATE) for _ in range(3)]
        try:
            boxes[1].pause()
            everything = leap0.sandboxes.list(page_size=100)
            assert everything.total_items == 3
            assert [i.id for i in everything.items] == [b.id for b in reversed(boxes)]
            oldest_first = leap0.sandboxes.list(order_by="asc")
            assert [i.id for i in oldest_first.items] == [b.id for b in boxes]

            paused = leap0.sandboxes.list(state="paused")
            assert [i.id for i in paused.items] == [boxes[1].id]
            assert paused.total_items == 1
            running = leap0.sandboxes.list(state="running")
            assert {i.id for i in running.items} == {boxes[0].id, boxes[2].id}

            first = leap0.sandboxes.list(page=1, page_size=2, order_by="asc")
            second = leap0.sandboxes.list(page=2, page_size=2, order_by="asc")
            assert (first.total_items, second.total_items) == (3, 3)
            assert [i.id for i in first.items + second.items] == [b.id for b in boxes]
            assert leap0.sandboxes.list(page=3, page_size=2).items == []

            by_state = leap0.sandboxes.list(sort="state", order_by="asc")
            assert [i.state for i in by_state.items] == ["paused", "running", "running"]
            item = first.items[0]
            assert item.timeout_at is not None and item.launch_time and item.state_change_time
        finally:
            for box in boxes:
                leap0.sandboxes.delete(box.id)
        assert leap0.sandboxes.list().total_items == 0


def test_pause_and_resume_on_request(backend: BackendServer, api_key: str) -> None:
    from leap0 import Leap0ConflictError

    with sdk(backend, api_key) as leap0:
        box = leap0.sandboxes.create(template_name=TEMPLATE, env_vars={"KEPT": "in-memory"})
        try:
            box.process.execute(command="echo remembered > /tmp/state")
            box.pause()
            assert box.state == "paused"
            assert leap0.sandboxes.get(box.id).state == "paused"
            with pytest.raises(Leap0ConflictError):
                box.pause()  # not running
            # A request to a paused sandbox resumes it, with its state intact.
            result = box.process.execute(command="cat /tmp/state")
            assert result.stdout.strip() == "remembered"
            assert leap0.sandboxes.get(box.id).state == "running"
        finally:
            box.delete()


def test_stop_and_start_keep_the_disk(backend: BackendServer, api_key: str) -> None:
    with sdk(backend, api_key) as leap0, http(backend, api_key) as raw:
        box = leap0.sandboxes.create(template_name=TEMPLATE)
        try:
            box.filesystem.write_file(path="/tmp/kept.txt", content="still here")
            stopped = raw.post(f"/v1/sandbox/{box.id}/stop")
            assert stopped.status_code == 200, stopped.text
            assert stopped.json()["state"] == "stopped"
            assert raw.post(f"/v1/sandbox/{box.id}/stop").status_code == 409
            assert raw.post(f"/v1/sandbox/{box.id}/pause").status_code == 409
            # Process calls do not silently start a stopped sandbox.
            assert raw.post(
                f"/v1/sandbox/{box.id}/process/execute", json={"command": "true"}
            ).status_code == 409
            started = raw.post(f"/v1/sandbox/{box.id}/start/")
            assert started.status_code == 200, started.text
            assert started.json()["state"] == "running"
            assert raw.post(f"/v1/sandbox/{box.id}/start").status_code == 409
            assert box.filesystem.read_file(path="/tmp/kept.txt") == "still here"
        finally:
            box.delete()


def test_execute_sees_sandbox_and_request_env(backend: BackendServer, api_key: str) -> None:
    with sdk(backend, api_key) as leap0:
        box = leap0.sandboxes.create(template_name=TEMPLATE, env_vars={"FROM_SANDBOX": "one"})
        try:
            result = box.process.execute(
                command='echo "$FROM_SANDBOX $FROM_REQUEST"; echo oops >&2; exit 3',
                env={"FROM_REQUEST": "two"},
            )
            assert result.exit_code == 3
            assert result.stdout == "one two\n"
            assert result.stderr == "oops\n"
            assert box.process.execute(command="pwd", cwd="/tmp").stdout.strip() == "/tmp"
            # The request env applies to that process only.
            later = box.process.execute(command='echo "[$FROM_REQUEST]"')
            assert later.stdout.strip() == "[]"
            slow = box.process.execute(command="sleep 5", timeout=1)
            assert slow.exit_code != 0
        finally:
            box.delete()


def test_filesystem_calls(backend: BackendServer, api_key: str) -> None:
    from leap0 import Leap0NotFoundError

    with sdk(backend, api_key) as leap0:
        box = leap0.sandboxes.create(template_name=TEMPLATE)
        try:
            fs = box.filesystem
            fs.mkdir(path="/tmp/work/deep", recursive=True)
            fs.write_file(path="/tmp/work/a.txt", content="one\ntwo\nthree\n")
            fs.write_bytes(path="/tmp/work/b.bin", content=bytes(range(256)), permissions="600")
            assert fs.exists(path="/tmp/work/a.txt") is True
            assert fs.exists(path="/tmp/work/missing") is False
            names = sorted(item.name for item in fs.ls(path="/tmp/work").items)
            assert names == ["a.txt", "b.bin", "deep"]
            info = fs.stat(path="/tmp/work/b.bin")
            assert (info.size, info.is_dir, info.mode) == (256, False, "600")
            assert fs.stat(path="/tmp/work/deep").is_dir is True
            assert fs.read_bytes(path="/tmp/work/b.bin") == bytes(range(256))
            assert fs.read_file(path="/tmp/work/a.txt", head=1) == "one\n"
            assert fs.read_file(path="/tmp/work/a.txt", tail=1) == "three\n"
            assert fs.read_file(path="/tmp/work/a.txt", offset=4, limit=3) == "two"
            # What the file API wrote, processes see.
            seen = box.process.execute(command="cat /tmp/work/a.txt | wc -l").stdout.strip()
            assert seen == "3"
            fs.delete(path="/tmp/work/a.txt")
            assert fs.exists(path="/tmp/work/a.txt") is False
            fs.delete(path="/tmp/work", recursive=True)
            assert fs.exists(path="/tmp/work") is False
            with pytest.raises(Leap0NotFoundError):
                fs.stat(path="/tmp/work")
            with pytest.raises(Leap0NotFoundError):
                fs.read_file(path="/tmp/work/a.txt")
        finally:
            box.delete()


def test_delete_is_refused_while_transitioning(backend: BackendServer, api_key: str) -> None:
    import threading

    with http(backend, api_key) as raw:
        sandbox_id = raw.post("/v1/sandbox", json={"template_name": TEMPLATE}).json()["id"]
        raw.post(f"/v1/sandbox/{sandbox_id}/pause")
        answers: list[int] = []

        def resume() -> None:
            with http(backend, api_key) as other:
                other.post(f"/v1/sandbox/{sandbox_id}/process/execute", json={"command": "true"})

        # Resuming takes a moment; a delete that lands inside it answers 409, never 500.
        worker = threading.Thread(target=resume)
        worker.start()
        while worker.is_alive():
            answers.append(raw.delete(f"/v1/sandbox/{sandbox_id}").status_code)
            if answers[-1] == 204:
                break
        worker.join()
        if not answers or answers[-1] != 204:
            assert raw.delete(f"/v1/sandbox/{sandbox_id}").status_code == 204
    assert set(answers) <= {204, 409}
