"""Object-storage mounts through the API: add, update, delete; credentials never come back.

The API side (ids, limits, validation, what responses carry) runs everywhere. Reading a
bucket's objects inside the sandbox needs the runner's FUSE mounts and a local S3 server
(moto); that part uses ``require`` so CI, which has both, cannot skip it.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from pulumi_leap0 import spec
from pulumi_leap0.runner import rclone
from tests.backend.helpers import TEMPLATE, http, sdk
from tests.fixtures.backend import BackendServer
from tests.fixtures.s3 import S3
from tests.support import require

SECRET_ID = "AKIA-test-key-id"
SECRET_KEY = "very-secret-access-key"


def _mount(endpoint: str, path: str = "/data", **extra: Any) -> dict[str, Any]:
    return {
        "type": "object-storage",
        "bucket": "assets",
        "mount_path": path,
        "endpoint": endpoint,
        "access_key_id": SECRET_ID,
        "secret_access_key": SECRET_KEY,
        **extra,
    }


@pytest.fixture(scope="module")
def mounts_available(backend: BackendServer) -> bool:
    """Whether the runner behind the backend can attach object-storage mounts here."""
    capabilities = httpx.get(f"{backend.base_url}/healthz").json()["capabilities"]
    return bool(capabilities.get("object_storage_mounts"))


def _require_mounts(available: bool) -> None:
    require(available, "the runner reports object_storage_mounts unavailable on this host")


@pytest.fixture(scope="module")
def s3_endpoint(s3: S3) -> str:
    """The session's moto S3 server (tests/fixtures/s3.py) with bucket ``assets`` holding
    two objects. moto does not check keys, so this module's own keys work against it."""
    client = s3.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket="assets")
    client.put_object(Bucket="assets", Key="docs/readme.txt", Body=b"hello from s3\n")
    client.put_object(Bucket="assets", Key="top.txt", Body=b"top level\n")
    return s3.endpoint


def test_mounts_add_update_delete_without_credentials_in_answers(
    backend: BackendServer, api_key: str, s3_endpoint: str, mounts_available: bool
) -> None:
    _require_mounts(mounts_available)
    with sdk(backend, api_key) as leap0, http(backend, api_key) as raw:
        box = leap0.sandboxes.create(
            template_name=TEMPLATE, mounts=[_mount(s3_endpoint, "/mnt/boot", prefix="docs/")]
        )
        try:
            assert [m.mount_path for m in box.mounts] == ["/mnt/boot"]
            assert box.mounts[0].id.startswith(spec.MOUNT_ID_PREFIX)
            added = box.add_mount(_mount(s3_endpoint, "/mnt/extra"))
            assert added.id.startswith(spec.MOUNT_ID_PREFIX)
            assert (added.bucket, added.mount_path, added.read_only) == (
                "assets", "/mnt/extra", True,
            )
            updated = box.update_mount(added.id, {"prefix": "docs/"})
            assert (updated.id, updated.prefix) == (added.id, "docs/")
            moved = box.update_mount(added.id, {"mount_path": "/mnt/moved"})
            assert moved.mount_path == "/mnt/moved"

            status = raw.get(f"/v1/sandbox/{box.id}")
            assert sorted(m["mount_path"] for m in status.json()["mounts"]) == [
                "/mnt/boot", "/mnt/moved",
            ]
            for text in (status.text, raw.get("/v1/sandboxes").text):
                assert SECRET_KEY not in text and SECRET_ID not in text

            # Same path twice, and an unknown mount.
            mounts_url = f"/v1/sandbox/{box.id}/mounts"
            duplicate = raw.post(mounts_url, json=_mount(s3_endpoint, "/mnt/boot"))
            assert duplicate.status_code == 409
            assert raw.patch(f"{mounts_url}/mnt-nope", json={"prefix": "a/"}).status_code == 404
            assert raw.delete(f"{mounts_url}/mnt-nope").status_code == 404

            box.delete_mount(added.id)
            after = raw.get(f"/v1/sandbox/{box.id}").json()["mounts"]
            assert [m["mount_path"] for m in after] == ["/mnt/boot"]
        finally:
            box.delete()


def test_mount_limit(
    backend: BackendServer, api_key: str, s3_endpoint: str, mounts_available: bool
) -> None:
    mounts = [_mount(s3_endpoint, f"/mnt/m{n}") for n in range(spec.MAX_MOUNTS)]
    with http(backend, api_key) as raw:
        too_many = raw.post(
            "/v1/sandbox",
            json={"template_name": TEMPLATE, "mounts": [*mounts, _mount(s3_endpoint, "/x")]},
        )
        assert too_many.status_code == 400
        assert too_many.json()["errors"][0]["field"] == "mounts"
        _require_mounts(mounts_available)
        created = raw.post("/v1/sandbox", json={"template_name": TEMPLATE, "mounts": mounts})
        assert created.status_code == 201, created.text
        sandbox_id = created.json()["id"]
        try:
            refused = raw.post(
                f"/v1/sandbox/{sandbox_id}/mounts", json=_mount(s3_endpoint, "/mnt/x")
            )
            assert refused.status_code == 409
            assert str(spec.MAX_MOUNTS) in refused.json()["message"]
        finally:
            raw.delete(f"/v1/sandbox/{sandbox_id}")


def _fuse_ready() -> bool:
    return Path("/dev/fuse").exists() and rclone.BINARY is not None


@pytest.mark.root
def test_bucket_contents_appear_inside_the_sandbox(
    backend: BackendServer, api_key: str, s3_endpoint: str, mounts_available: bool
) -> None:
    require(_fuse_ready(), "FUSE mounts need /dev/fuse and rclone (make rclone)")
    _require_mounts(mounts_available)
    with sdk(backend, api_key) as leap0:
        box = leap0.sandboxes.create(
            template_name=TEMPLATE, mounts=[_mount(s3_endpoint, "/mnt/docs", prefix="docs/")]
        )
        try:
            seen = box.process.execute(command="cat /mnt/docs/readme.txt")
            assert seen.stdout == "hello from s3\n", seen.stderr
            added = box.add_mount(_mount(s3_endpoint, "/mnt/all"))
            assert box.process.execute(command="cat /mnt/all/top.txt").stdout == "top level\n"
            # Read-only, and the credentials are nowhere in the sandbox's environment.
            write = box.process.execute(command="echo x > /mnt/all/new.txt")
            assert write.exit_code != 0
            env = box.process.execute(
                command="env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'"
            )
            assert SECRET_KEY not in env.stdout
            box.update_mount(added.id, {"prefix": "docs/"})
            again = box.process.execute(command="cat /mnt/all/readme.txt")
            assert again.stdout == "hello from s3\n"
            box.delete_mount(added.id)
            assert box.process.execute(command="ls /mnt/all/top.txt").exit_code != 0
            # A paused sandbox keeps its mounts when it resumes.
            box.pause()
            resumed = box.process.execute(command="cat /mnt/docs/readme.txt")
            assert resumed.stdout == "hello from s3\n"
        finally:
            box.delete()


def test_unreachable_endpoint_is_not_a_server_error(
    backend: BackendServer, api_key: str
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with http(backend, api_key) as raw:
        created = raw.post("/v1/sandbox", json={"template_name": TEMPLATE})
        sandbox_id = created.json()["id"]
        try:
            answer = raw.post(f"/v1/sandbox/{sandbox_id}/mounts", json=_mount(endpoint, "/mnt/x"))
            assert answer.status_code < 500, answer.text
            assert SECRET_KEY not in answer.text
        finally:
            raw.delete(f"/v1/sandbox/{sandbox_id}")


def test_mount_routes_api_side(backend: BackendServer, api_key: str, s3_endpoint: str) -> None:
    """What holds with or without the runner's mount support."""
    with http(backend, api_key) as raw:
        sandbox_id = raw.post("/v1/sandbox", json={"template_name": TEMPLATE}).json()["id"]
        try:
            mounts_url = f"/v1/sandbox/{sandbox_id}/mounts"
            assert raw.patch(f"{mounts_url}/mnt-nope", json={"prefix": "a/"}).status_code == 404
            assert raw.delete(f"{mounts_url}/mnt-nope").status_code == 404
            bad = raw.post(mounts_url, json=_mount(s3_endpoint, "/proc/x", prefix="/abs"))
            assert bad.status_code == 400
            assert {e["field"] for e in bad.json()["errors"]} == {"mount_path", "prefix"}
            assert SECRET_KEY not in bad.text
            # Attached or refused, never a server error, never the credentials.
            added = raw.post(mounts_url, json=_mount(s3_endpoint, "/mnt/ok"))
            assert added.status_code in (201, 400), added.text
            assert SECRET_KEY not in added.text and SECRET_ID not in added.text
            if added.status_code == 400:
                assert added.json()["errors"][0]["field"] == "endpoint"
                assert raw.get(f"/v1/sandbox/{sandbox_id}").json()["mounts"] == []
        finally:
            raw.delete(f"/v1/sandbox/{sandbox_id}")
        # A create whose mounts cannot be attached leaves nothing behind.
        refused = raw.post(
            "/v1/sandbox",
            json={"template_name": TEMPLATE, "mounts": [_mount(s3_endpoint, "/mnt/a")]},
        )
        assert refused.status_code in (201, 400), refused.text
        if refused.status_code == 201:
            raw.delete(f"/v1/sandbox/{refused.json()['id']}")
        else:
            assert refused.json()["errors"][0]["field"] == "mounts"
        assert raw.get("/v1/sandboxes").json()["total_items"] == 0


def test_mounts_are_served_again_after_a_restart_even_if_rclone_died(
    s3_endpoint: str, mounts_available: bool
) -> None:
    import json
    import os
    import signal

    from tests.fixtures.backend import running_backend

    require(_fuse_ready(), "FUSE mounts need /dev/fuse and rclone (make rclone)")
    _require_mounts(mounts_available)
    with running_backend() as own, http(own, own.new_api_key()) as raw:
        created = raw.post("/v1/sandbox", json={
            "template_name": TEMPLATE, "mounts": [_mount(s3_endpoint, "/mnt/docs",
                                                         prefix="docs/")]})
        assert created.status_code == 201, created.text
        sandbox_id = created.json()["id"]

        def read() -> str:
            result = raw.post(f"/v1/sandbox/{sandbox_id}/process/execute",
                              json={"command": "cat /mnt/docs/readme.txt"}).json()
            return str(result["stdout"])

        assert read() == "hello from s3\n"
        own.restart()  # rclone outlives the backend
        assert read() == "hello from s3\n"
        records = list((own.data_dir / "sandboxes" / sandbox_id / "mounts").glob("*.json"))
        assert len(records) == 1
        os.kill(json.loads(records[0].read_text())["pid"], signal.SIGKILL)
        assert read() != "hello from s3\n"  # the mount is dead now
        own.restart()  # and the backend serves it again from its store
        assert read() == "hello from s3\n"
        assert raw.delete(f"/v1/sandbox/{sandbox_id}").status_code == 204
