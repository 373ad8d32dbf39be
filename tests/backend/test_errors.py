"""Auth, isolation, quota and validation: every refusal in the API's shape, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from pulumi_leap0 import spec
from tests.backend.helpers import TEMPLATE, http, sdk
from tests.fixtures.backend import BackendServer

MOUNT = {
    "type": "object-storage",
    "bucket": "assets",
    "mount_path": "/data",
    "endpoint": "http://127.0.0.1:9",
}

#: Every sandbox route, with a body that would be valid.
SANDBOX_ROUTES: list[tuple[str, str, dict[str, object] | None]] = [
    ("GET", "/v1/sandbox/{id}/", None),
    ("DELETE", "/v1/sandbox/{id}/", None),
    ("POST", "/v1/sandbox/{id}/pause", None),
    ("POST", "/v1/sandbox/{id}/stop", None),
    ("POST", "/v1/sandbox/{id}/start", None),
    ("POST", "/v1/sandbox/{id}/mounts", MOUNT),
    ("PATCH", "/v1/sandbox/{id}/mounts/mnt-0000", {"prefix": "a/"}),
    ("DELETE", "/v1/sandbox/{id}/mounts/mnt-0000", None),
    ("POST", "/v1/sandbox/{id}/process/execute", {"command": "true"}),
    ("POST", "/v1/sandbox/{id}/filesystem/ls", {"path": "/"}),
    ("POST", "/v1/sandbox/{id}/filesystem/stat", {"path": "/"}),
    ("POST", "/v1/sandbox/{id}/filesystem/mkdir", {"path": "/tmp/x"}),
    ("POST", "/v1/sandbox/{id}/filesystem/read-file", {"path": "/etc/hostname"}),
    ("POST", "/v1/sandbox/{id}/filesystem/delete", {"path": "/tmp/x"}),
    ("POST", "/v1/sandbox/{id}/filesystem/exists", {"path": "/"}),
    ("POST", "/v1/sandbox/{id}/filesystem/write-files", {}),  # multipart: any body is bad
    ("POST", "/v1/sandbox/{id}/filesystem/read-files", {"paths": ["/etc/hostname"]}),
    ("POST", "/v1/sandbox/{id}/filesystem/set-permissions", {"path": "/tmp", "mode": "1777"}),
    ("POST", "/v1/sandbox/{id}/filesystem/glob", {"path": "/etc", "pattern": "*"}),
    ("POST", "/v1/sandbox/{id}/filesystem/grep", {"path": "/etc/hostname", "pattern": "."}),
    ("POST", "/v1/sandbox/{id}/filesystem/edit-file", {"path": "/tmp/x", "edits": [{"find": "a"}]}),
    ("POST", "/v1/sandbox/{id}/filesystem/edit-files", {"files": ["/tmp/x"], "find": "a"}),
    ("POST", "/v1/sandbox/{id}/filesystem/move", {"src_path": "/tmp/x", "dst_path": "/tmp/y"}),
    ("POST", "/v1/sandbox/{id}/filesystem/copy", {"src_path": "/tmp/x", "dst_path": "/tmp/y"}),
    ("POST", "/v1/sandbox/{id}/filesystem/tree", {"path": "/etc"}),
    ("GET", "/v1/sandbox/{id}/system/user-home-dir", None),
    ("GET", "/v1/sandbox/{id}/system/workdir", None),
]


@pytest.fixture
def sandbox_id(backend: BackendServer, api_key: str) -> Iterator[str]:
    with http(backend, api_key) as raw:
        created = raw.post("/v1/sandbox/", json={"template_name": TEMPLATE})
        assert created.status_code == 201, created.text
        yield created.json()["id"]
        raw.delete(f"/v1/sandbox/{created.json()['id']}/")


def _request(raw: httpx.Client, method: str, path: str, body: object) -> httpx.Response:
    return raw.request(method, path, json=body) if body is not None else raw.request(method, path)


def test_every_v1_route_needs_a_key(backend: BackendServer, sandbox_id: str) -> None:
    routes = [
        *SANDBOX_ROUTES,
        ("POST", "/v1/sandbox/", {"template_name": TEMPLATE}),
        ("GET", "/v1/sandboxes", None),
        ("POST", "/v1/sandbox/{id}/filesystem/write-file?path=/tmp/f", None),
    ]
    bad_headers = [
        {},
        {"Authorization": "Bearer l0_not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"leap0-authorization": "l0_not-a-key"},
    ]
    with http(backend) as raw:
        for method, path, body in routes:
            for headers in bad_headers:
                raw.headers.clear()
                raw.headers.update(headers)
                answer = _request(raw, method, path.format(id=sandbox_id), body)
                assert answer.status_code == 401, (method, path, headers, answer.text)
                assert set(answer.json()) == {"message"}


def test_both_auth_headers_work(backend: BackendServer, api_key: str, sandbox_id: str) -> None:
    for headers in (
        {"Authorization": f"Bearer {api_key}"},
        {"authorization": f"bearer {api_key}"},
        {"leap0-authorization": api_key},
        {"leap0-authorization": f"Bearer {api_key}"},
    ):
        answer = httpx.get(f"{backend.base_url}/v1/sandbox/{sandbox_id}", headers=headers)
        assert answer.status_code == 200, headers
    with sdk(backend, api_key, auth_header="leap0-authorization", bearer=False) as leap0:
        assert leap0.sandboxes.get(sandbox_id).id == sandbox_id


def test_another_orgs_sandbox_is_not_found_on_every_route(
    backend: BackendServer, sandbox_id: str
) -> None:
    stranger = backend.new_api_key()
    with http(backend, stranger) as raw:
        for method, path, body in SANDBOX_ROUTES:
            answer = _request(raw, method, path.format(id=sandbox_id), body)
            assert answer.status_code == 404, (method, path, answer.text)
            assert set(answer.json()) == {"message"}
        written = raw.post(
            f"/v1/sandbox/{sandbox_id}/filesystem/write-file",
            params={"path": "/tmp/f"},
            content=b"x",
        )
        assert written.status_code == 404
        assert raw.get("/v1/sandboxes").json() == {"items": [], "total_items": 0}
        # An id that never existed answers the same way.
        for method, path, body in SANDBOX_ROUTES:
            answer = _request(raw, method, path.format(id="sbx-doesnotexist"), body)
            assert answer.status_code == 404, (method, path)


def test_refusals_come_key_first_then_sandbox_then_input(
    backend: BackendServer, api_key: str, sandbox_id: str
) -> None:
    # Bad input on every route that takes any: a stranger must learn of the key, then of
    # the sandbox, before any rule of the body or query is checked.
    bad_input = [
        (method, path, b"{") for method, path, body in SANDBOX_ROUTES if body is not None
    ] + [("POST", "/v1/sandbox/{id}/filesystem/write-file", b"x")]  # no ?path=
    for key, expected in [(None, 401), (backend.new_api_key(), 404), (api_key, 400)]:
        with http(backend, key) as raw:
            for method, template, content in bad_input:
                path = template.format(id=sandbox_id)
                answer = raw.request(
                    method, path, content=content, headers={"content-type": "application/json"}
                )
                assert answer.status_code == expected, (key is None, method, path, answer.text)


def test_keys_of_one_org_share_it(backend: BackendServer, sandbox_id: str, api_key: str) -> None:
    from pulumi_leap0.backend.store import DB_FILE_NAME, Store

    store = Store(backend.data_dir / DB_FILE_NAME)
    try:
        org_id = store.org_for_key_hash(__import__("hashlib").sha256(api_key.encode()).hexdigest())
        assert org_id is not None
    finally:
        store.close()
    # The key is stored only as a hash.
    assert api_key.encode() not in (backend.data_dir / DB_FILE_NAME).read_bytes()


def test_quota_is_three_and_says_so(backend: BackendServer, api_key: str) -> None:
    from leap0 import Leap0ConflictError

    with sdk(backend, api_key) as leap0:
        boxes = [leap0.sandboxes.create(template_name=TEMPLATE) for _ in range(3)]
        try:
            boxes[0].pause()  # paused sandboxes count too
            with pytest.raises(Leap0ConflictError) as refused:
                leap0.sandboxes.create(template_name=TEMPLATE)
            assert refused.value.status_code == 409
            message = refused.value.error_message or ""
            assert str(spec.MAX_SANDBOXES_PER_ORG) in message and "has 3" in message
            # Another organization is not affected.
            with sdk(backend, backend.new_api_key()) as other:
                other_box = other.sandboxes.create(template_name=TEMPLATE)
                other_box.delete()
            boxes.pop().delete()
            boxes.append(leap0.sandboxes.create(template_name=TEMPLATE))
        finally:
            for box in boxes:
                box.delete()


def test_validation_errors_use_spec_field_paths(backend: BackendServer, api_key: str) -> None:
    body = {
        "template_name": TEMPLATE,
        "vcpu": 9,
        "memory": 1025,
        "env_vars": {"1BAD": "x"},
        "mounts": [
            {**MOUNT, "prefix": "/abs"},
            {**MOUNT, "mount_path": "/other", "secret_access_key": "hush"},
        ],
        "network_policy": {"mode": "custom", "allow_domains": ["not a domain"]},
    }
    with http(backend, api_key) as raw:
        answer = raw.post("/v1/sandbox/", json=body)
    assert answer.status_code == 400
    payload = answer.json()
    assert payload["message"] == "Invalid request"
    with pytest.raises(spec.SpecError) as expected:
        spec.validate_create(body)
    assert payload == expected.value.body().model_dump(mode="json")
    fields = {e["field"] for e in payload["errors"]}
    assert {"vcpu", "memory", "mounts[0].prefix", "network_policy.allow_domains[0]"} <= fields
    assert "hush" not in answer.text


def test_sdk_sees_a_400_as_a_plain_error(backend: BackendServer, api_key: str) -> None:
    from leap0 import Leap0Error

    with sdk(backend, api_key) as leap0, pytest.raises(Leap0Error) as refused:
        leap0.sandboxes.create(template_name="no/such:template")
    assert refused.value.status_code == 400
    errors = json.loads(refused.value.body or "{}")["errors"]
    assert [e["field"] for e in errors] == ["template_name"]


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"{not json", "body"),
        (b"", "body"),
        (b"[1, 2]", "body"),
        (b'"text"', "body"),
        (b'{"template_name": 5}', "template_name"),
        (b'{"template_name": "x", "vcpu": "two"}', "vcpu"),
        (b'{"template_name": "x", "mounts": {"a": 1}}', "mounts"),
        (b'{"vcpu": 1}', "template_name"),
    ],
)
def test_malformed_bodies_answer_400(
    backend: BackendServer, api_key: str, content: bytes, field: str
) -> None:
    with http(backend, api_key) as raw:
        answer = raw.post(
            "/v1/sandbox/", content=content, headers={"content-type": "application/json"}
        )
    assert answer.status_code == 400, answer.text
    assert field in [e["field"] for e in answer.json()["errors"]]


def test_bad_request_bodies_on_sandbox_routes(
    backend: BackendServer, api_key: str, sandbox_id: str
) -> None:
    with http(backend, api_key) as raw:
        for path, body in [
            ("process/execute", {}),
            ("process/execute", {"command": ""}),
            ("process/execute", {"command": "true", "timeout": 0}),
            ("filesystem/ls", {"path": ""}),
            ("filesystem/stat", {"path": 3}),
            ("filesystem/mkdir", {"path": "/tmp/x", "permissions": "rwx"}),
            ("filesystem/read-file", {"path": "/x", "head": 1, "tail": 1}),
            ("mounts", {**MOUNT, "read_only": False}),
            ("mounts", {**MOUNT, "mount_path": "relative"}),
        ]:
            answer = raw.post(f"/v1/sandbox/{sandbox_id}/{path}", json=body)
            assert answer.status_code == 400, (path, body, answer.text)
            assert answer.json()["errors"], (path, body)
        bad_patch = raw.patch(f"/v1/sandbox/{sandbox_id}/mounts/mnt-x", json={"prefix": "/"})
        assert bad_patch.status_code in (400, 404)


def test_list_query_errors(backend: BackendServer, api_key: str) -> None:
    with http(backend, api_key) as raw:
        for params, field in [
            ({"page": "0"}, "page"),
            ({"page": "x"}, "page"),
            ({"page-size": "101"}, "page-size"),
            ({"order-by": "sideways"}, "order-by"),
            ({"sort": "id"}, "sort"),
            ({"state": "deleted"}, "state"),
        ]:
            answer = raw.get("/v1/sandboxes", params=params)
            assert answer.status_code == 400, params
            # Only {"message"} fits the document's oneOf for this call; it names the field.
            assert set(answer.json()) == {"message"}
            assert f"{field}:" in answer.json()["message"]


def test_oversize_bodies_answer_413(backend: BackendServer, api_key: str) -> None:
    big = json.dumps({"template_name": TEMPLATE, "env_vars": {"X": "y" * (2 << 20)}})
    with http(backend, api_key) as raw:
        answer = raw.post("/v1/sandbox/", content=big, headers={"content-type": "application/json"})
        assert answer.status_code == 413
        assert "message" in answer.json()

        def chunks() -> Iterator[bytes]:
            for _ in range(3):
                yield b" " * (1 << 20)

        chunked = raw.post("/v1/sandbox/", content=chunks())
        assert chunked.status_code == 413
        assert raw.get("/v1/sandboxes").json()["total_items"] == 0


def test_unknown_routes_and_methods_answer_json(backend: BackendServer, api_key: str) -> None:
    with http(backend, api_key) as raw:
        missing = raw.get("/v1/nothing-here")
        assert missing.status_code == 404 and "message" in missing.json()
        wrong = raw.put("/v1/sandboxes")
        assert wrong.status_code == 405 and "message" in wrong.json()


def test_openapi_is_published(backend: BackendServer) -> None:
    document = httpx.get(f"{backend.base_url}/openapi.json").json()
    assert "/v1/sandbox/" in document["paths"]
    assert "/v1/sandbox/{sandbox_id}/process/execute" in document["paths"]
