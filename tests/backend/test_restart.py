"""Stop and restart the server: every sandbox is still there, in its true state."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backend.helpers import TEMPLATE, http
from tests.fixtures.backend import BackendServer, running_backend


@pytest.fixture
def own_backend() -> Iterator[BackendServer]:
    """A server of this test's own: restarting the session's server would disturb others."""
    with running_backend() as server:
        yield server


def test_restart_loses_nothing(own_backend: BackendServer) -> None:
    key = own_backend.new_api_key("restart-org")
    with http(own_backend, key) as raw:
        ids = [
            raw.post(
                "/v1/sandbox",
                json={
                    "template_name": TEMPLATE,
                    "env_vars": {"MARK": str(n)},
                    "network_policy": {"mode": "deny-all"},
                    "timeout": 3600,
                },
            ).json()["id"]
            for n in range(3)
        ]
        running, paused, stopped = ids
        raw.post(f"/v1/sandbox/{running}/filesystem/write-file", params={"path": "/tmp/f"},
                 content=b"on disk")
        raw.post(f"/v1/sandbox/{stopped}/filesystem/write-file", params={"path": "/tmp/f"},
                 content=b"kept across stop")
        assert raw.post(f"/v1/sandbox/{paused}/pause").status_code == 201
        assert raw.post(f"/v1/sandbox/{stopped}/stop").status_code == 200
        before = {i["id"]: i for i in raw.get("/v1/sandboxes").json()["items"]}
        details_before = {i: raw.get(f"/v1/sandbox/{i}").json() for i in ids}

    own_backend.restart()

    with http(own_backend, key) as raw:
        after = {i["id"]: i for i in raw.get("/v1/sandboxes").json()["items"]}
        assert set(after) == set(before)
        for sandbox_id in ids:
            detail = raw.get(f"/v1/sandbox/{sandbox_id}").json()
            expected = details_before[sandbox_id]
            for field in ("template_id", "vcpu", "memory", "disk", "timeout", "auto_pause",
                          "created_at", "network_policy", "mounts"):
                assert detail[field] == expected[field], field
            # True states: what the runner says is alive, everything else stopped.
            assert detail["state"] in {expected["state"], "stopped"}
        assert after[stopped]["state"] == "stopped"
        # Whatever state each came back in, each works again.
        for sandbox_id in ids:
            if raw.get(f"/v1/sandbox/{sandbox_id}").json()["state"] == "stopped":
                assert raw.post(f"/v1/sandbox/{sandbox_id}/start").status_code == 200
        result = raw.post(f"/v1/sandbox/{running}/process/execute",
                          json={"command": "echo $MARK; cat /tmp/f"}).json()
        assert result["stdout"].startswith("0\n")
        kept = raw.post(f"/v1/sandbox/{stopped}/filesystem/read-file", json={"path": "/tmp/f"})
        assert kept.content == b"kept across stop"
        for sandbox_id in ids:
            assert raw.delete(f"/v1/sandbox/{sandbox_id}").status_code == 204
        assert raw.get("/v1/sandboxes").json()["total_items"] == 0
    # Nothing is left behind: no rows, no credentials, no sandbox folders.
    own_backend.restart()
    with http(own_backend, key) as raw:
        assert raw.get("/v1/sandboxes").json()["total_items"] == 0
