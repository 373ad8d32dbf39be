"""Snapshots through the API: the official SDK's ``snapshots`` calls, restore after a
restart, the quota on restores, organizations kept apart, and storage freed."""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.backend.helpers import TEMPLATE, http, sdk
from tests.fixtures.backend import BackendServer, running_backend


def _archive(backend: BackendServer, snapshot_id: str) -> Path | None:
    found = list((backend.data_dir / "snapshots").glob(f"*/{snapshot_id}.tar"))
    return found[0] if found else None


def _sandbox(raw: httpx.Client, **body: object) -> str:
    response = raw.post("/v1/sandbox", json={"template_name": TEMPLATE,
                                             "network_policy": {"mode": "deny-all"}, **body})
    assert response.status_code == 201, response.text
    sandbox_id: str = response.json()["id"]
    return sandbox_id


def _write(raw: httpx.Client, sandbox_id: str, path: str, content: bytes) -> None:
    response = raw.post(f"/v1/sandbox/{sandbox_id}/filesystem/write-file",
                        params={"path": path}, content=content)
    assert response.status_code in (200, 201, 204), response.text


def _read(raw: httpx.Client, sandbox_id: str, path: str) -> bytes:
    response = raw.post(f"/v1/sandbox/{sandbox_id}/filesystem/read-file", json={"path": path})
    assert response.status_code == 200, response.text
    return response.content


def test_sdk_snapshot_list_restore_delete(backend: BackendServer, api_key: str) -> None:
    with sdk(backend, api_key) as leap0:
        box = leap0.sandboxes.create(template_name=TEMPLATE, vcpu=2, memory=1536,
                                     env_vars={"MARK": "kept"},
                                     network_policy={"mode": "deny-all"})
        box.filesystem.write_file(path="/home/user/notes.txt",
                                  content="written before the snapshot")
        snap = box.create_snapshot(name="workspace-warm")
        assert snap.id.startswith("snap-") and snap.name == "workspace-warm"
        assert (snap.template_id, snap.vcpu, snap.memory, snap.disk) == (
            TEMPLATE, 2, 1536, box.disk)
        archive = _archive(backend, snap.id)
        assert archive is not None
        assert stat.S_IMODE(archive.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        # The source runs on, unchanged.
        assert leap0.sandboxes.get(box.id).state == "running"

        listing = leap0.snapshots.list(query="WARM")
        assert [s.id for s in listing.items] == [snap.id] and listing.total_items == 1
        assert leap0.snapshots.list(query="other").total_items == 0

        restored = leap0.snapshots.restore(snapshot_name="workspace-warm", timeout=900,
                                           network_policy={"mode": "allow-all"})
        assert restored.id != box.id
        assert (restored.template_id, restored.vcpu, restored.memory, restored.disk,
                restored.timeout) == (TEMPLATE, 2, 1536, box.disk, 900)
        assert restored.network_policy["mode"] == "allow-all"
        assert restored.filesystem.read_file(path="/home/user/notes.txt") == (
            "written before the snapshot")
        assert restored.process.execute(command="echo $MARK").stdout == "kept\n"

        leap0.snapshots.delete(snap.id)
        assert not archive.exists()
        assert leap0.snapshots.list().total_items == 0
        from leap0 import Leap0NotFoundError
        with pytest.raises(Leap0NotFoundError):
            leap0.snapshots.delete(snap.id)
        # The restored sandbox owns its files: deleting the snapshot took nothing of it.
        assert restored.filesystem.read_file(path="/home/user/notes.txt") == (
            "written before the snapshot")
        restored.delete()
        box.delete()


def test_kill_sandbox_after_deletes_the_source(backend: BackendServer, api_key: str) -> None:
    with http(backend, api_key) as raw:
        source = _sandbox(raw)
        _write(raw, source, "/tmp/f", b"last words")
        made = raw.post(f"/v1/sandbox/{source}/snapshot/create",
                        json={"kill_sandbox_after": True})
        assert made.status_code == 201, made.text
        assert made.json()["name"] == made.json()["id"]  # a generated name
        assert raw.get(f"/v1/sandbox/{source}").status_code == 404
        restored = raw.post("/v1/snapshot/restore",
                            json={"snapshot_name": made.json()["name"]}).json()
        assert restored["network_policy"]["mode"] == "deny-all"  # the snapshot's own
        assert _read(raw, restored["id"], "/tmp/f") == b"last words"
        assert raw.delete(f"/v1/sandbox/{restored['id']}").status_code == 204
        assert raw.delete(f"/v1/snapshot/{made.json()['id']}").status_code == 204


def test_a_paused_sandbox_is_snapshot_and_stays_paused(backend: BackendServer,
                                                       api_key: str) -> None:
    with http(backend, api_key) as raw:
        source = _sandbox(raw)
        _write(raw, source, "/home/user/p", b"paused")
        assert raw.post(f"/v1/sandbox/{source}/pause").status_code == 201
        made = raw.post(f"/v1/sandbox/{source}/snapshot/create", json={"name": "p"})
        assert made.status_code == 201, made.text
        assert raw.get(f"/v1/sandbox/{source}").json()["state"] == "paused"
        assert raw.delete(f"/v1/sandbox/{source}").status_code == 204
        restored = raw.post("/v1/snapshot/restore", json={"snapshot_name": "p"}).json()
        assert _read(raw, restored["id"], "/home/user/p") == b"paused"
        assert raw.delete(f"/v1/sandbox/{restored['id']}").status_code == 204


def test_names_and_bodies_are_checked(backend: BackendServer, api_key: str) -> None:
    with http(backend, api_key) as raw:
        source = _sandbox(raw)
        for name in ("", "has space", "-dash", "x" * 65, "a/b", "é"):
            answer = raw.post(f"/v1/sandbox/{source}/snapshot/create", json={"name": name})
            assert answer.status_code == 400, (name, answer.text)
            assert answer.json()["errors"][0]["field"] == "name"
        assert raw.post(f"/v1/sandbox/{source}/snapshot/create",
                        json={"name": "one"}).status_code == 201
        taken = raw.post(f"/v1/sandbox/{source}/snapshot/create", json={"name": "one"})
        assert taken.status_code == 409 and "already exists" in taken.json()["message"]
        for body, field in (({}, "snapshot_name"), ({"snapshot_name": "one", "timeout": 0},
                                                    "timeout")):
            answer = raw.post("/v1/snapshot/restore", json=body)
            assert answer.status_code == 400
            assert answer.json()["errors"][0]["field"] == field
        assert raw.post("/v1/snapshot/restore",
                        json={"snapshot_name": "none"}).status_code == 404
        assert raw.get("/v1/snapshots", params={"page-size": 0}).status_code == 400
        assert raw.get("/v1/snapshots", params={"sort": "name"}).status_code == 400
        assert raw.delete(f"/v1/sandbox/{source}").status_code == 204
        listing = raw.get("/v1/snapshots").json()
        for item in listing["items"]:
            assert raw.delete(f"/v1/snapshot/{item['id']}").status_code == 204


def test_another_organization_gets_404_on_every_snapshot_route(
        backend: BackendServer, api_key: str) -> None:
    other = backend.new_api_key()
    with http(backend, api_key) as mine, http(backend, other) as theirs:
        source = _sandbox(mine)
        made = mine.post(f"/v1/sandbox/{source}/snapshot/create",
                         json={"name": "private"}).json()
        assert theirs.post(f"/v1/sandbox/{source}/snapshot/create",
                           json={"name": "stolen"}).status_code == 404
        assert theirs.delete(f"/v1/snapshot/{made['id']}").status_code == 404
        assert theirs.post("/v1/snapshot/restore",
                           json={"snapshot_name": "private"}).status_code == 404
        assert theirs.get("/v1/snapshots").json() == {"items": [], "total_items": 0}
        # The same name is free in another organization.
        theirs_source = _sandbox(theirs)
        assert theirs.post(f"/v1/sandbox/{theirs_source}/snapshot/create",
                           json={"name": "private"}).status_code == 201
        assert mine.get("/v1/snapshots").json()["total_items"] == 1
        assert mine.delete(f"/v1/snapshot/{made['id']}").status_code == 204
        for raw, sandbox_id in ((mine, source), (theirs, theirs_source)):
            assert raw.delete(f"/v1/sandbox/{sandbox_id}").status_code == 204
        for item in theirs.get("/v1/snapshots").json()["items"]:
            assert theirs.delete(f"/v1/snapshot/{item['id']}").status_code == 204


def test_restore_at_the_quota_is_429_and_20_at_once_never_overshoot(
        backend: BackendServer, api_key: str) -> None:
    with http(backend, api_key) as raw:
        ids = [_sandbox(raw, memory=512) for _ in range(2)]
        made = raw.post(f"/v1/sandbox/{ids[0]}/snapshot/create", json={"name": "q"})
        assert made.status_code == 201

        def restore(_: int) -> int:
            with http(backend, api_key) as own:
                return own.post("/v1/snapshot/restore", json={"snapshot_name": "q"}).status_code

        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(restore, range(20)))
        assert codes.count(201) == 1, codes
        assert set(codes) == {201, 429}, codes
        listing = raw.get("/v1/sandboxes").json()
        assert listing["total_items"] == 3
        answer = raw.post("/v1/snapshot/restore", json={"snapshot_name": "q"})
        assert answer.status_code == 429 and "sandbox limit" in answer.json()["message"]
        assert raw.get("/v1/sandboxes").json()["total_items"] == 3
        for item in listing["items"]:
            assert raw.delete(f"/v1/sandbox/{item['id']}").status_code == 204
        assert raw.delete(f"/v1/snapshot/{made.json()['id']}").status_code == 204


def test_a_snapshot_bigger_than_the_restored_disk_fails_cleanly(
        backend: BackendServer, api_key: str) -> None:
    with http(backend, api_key) as raw:
        source = _sandbox(raw)
        assert raw.post(f"/v1/sandbox/{source}/process/execute",
                        json={"command": "head -c 24M /dev/urandom > ~/big"}).status_code == 200
        made = raw.post(f"/v1/sandbox/{source}/snapshot/create", json={"name": "big"}).json()
        assert raw.delete(f"/v1/sandbox/{source}").status_code == 204
        # A snapshot whose disk is smaller than its files: what a template's disk shrinking
        # under a stored snapshot would give. The store is the server's own sqlite file.
        with sqlite3.connect(backend.data_dir / "leap0.db") as db:
            db.execute("UPDATE snapshots SET disk = 8 WHERE id = ?", (made["id"],))
        answer = raw.post("/v1/snapshot/restore", json={"snapshot_name": "big"})
        assert answer.status_code == 400, answer.text
        assert answer.json()["errors"][0]["field"] == "snapshot_name"
        assert "8 MiB" in answer.json()["errors"][0]["error"]
        assert raw.get("/v1/sandboxes").json()["total_items"] == 0
        leftovers = [p.name for p in (backend.data_dir / "sandboxes").glob("sbx-*")]
        assert leftovers == []
        assert raw.delete(f"/v1/snapshot/{made['id']}").status_code == 204


@pytest.fixture
def own_backend() -> Iterator[BackendServer]:
    with running_backend() as server:
        yield server


def test_a_snapshot_survives_a_restart_and_half_made_ones_do_not(
        own_backend: BackendServer) -> None:
    key = own_backend.new_api_key("snapshot-restart")
    with http(own_backend, key) as raw:
        source = _sandbox(raw)
        _write(raw, source, "/home/user/kept", b"across the restart")
        made = raw.post(f"/v1/sandbox/{source}/snapshot/create",
                        json={"name": "durable"}).json()
        assert raw.delete(f"/v1/sandbox/{source}").status_code == 204
    # What a crash mid-snapshot leaves: a row not yet ready, and an archive of no row.
    with sqlite3.connect(own_backend.data_dir / "leap0.db") as db:
        db.execute("INSERT INTO snapshots SELECT 'snap-halfmade', org_id, 'half', "
                   "template_name, vcpu, memory, disk, env_vars, network_policy, 0, 0, "
                   "created_at, created_ts FROM snapshots WHERE id = ?", (made["id"],))
    archive = _archive(own_backend, made["id"])
    assert archive is not None
    orphan = archive.with_name("snap-orphan.tar")
    orphan.write_bytes(b"x")

    own_backend.restart()

    with http(own_backend, key) as raw:
        assert [s["name"] for s in raw.get("/v1/snapshots").json()["items"]] == ["durable"]
        assert not orphan.exists()
        restored = raw.post("/v1/snapshot/restore", json={"snapshot_name": "durable"})
        assert restored.status_code == 201, restored.text
        assert _read(raw, restored.json()["id"], "/home/user/kept") == b"across the restart"
        assert raw.post(f"/v1/sandbox/{restored.json()['id']}/snapshot/create",
                        json={"name": "half"}).status_code == 201  # the half-made name is free
        assert raw.delete(f"/v1/sandbox/{restored.json()['id']}").status_code == 204
        for item in raw.get("/v1/snapshots").json()["items"]:
            assert raw.delete(f"/v1/snapshot/{item['id']}").status_code == 204
    assert list((own_backend.data_dir / "snapshots").glob("*/*")) == []
