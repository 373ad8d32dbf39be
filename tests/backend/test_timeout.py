"""A sandbox's timeout is enforced by the server: deleted, or paused with auto_pause."""

from __future__ import annotations

from tests.backend.helpers import TEMPLATE, http, wait_for
from tests.fixtures.backend import BackendServer


def test_timeout_deletes(backend: BackendServer, api_key: str) -> None:
    with http(backend, api_key) as raw:
        sandbox_id = raw.post(
            "/v1/sandbox/", json={"template_name": TEMPLATE, "timeout": 1}
        ).json()["id"]
        wait_for(lambda: raw.get(f"/v1/sandbox/{sandbox_id}").status_code == 404,
                 timeout=15, what="the timed-out sandbox to be deleted")
        assert raw.get("/v1/sandboxes").json()["total_items"] == 0


def test_timeout_pauses_with_auto_pause_and_resume_restarts_the_clock(
    backend: BackendServer, api_key: str
) -> None:
    with http(backend, api_key) as raw:
        sandbox_id = raw.post(
            "/v1/sandbox/", json={"template_name": TEMPLATE, "timeout": 1, "auto_pause": True}
        ).json()["id"]

        def state() -> str:
            return str(raw.get(f"/v1/sandbox/{sandbox_id}").json()["state"])

        wait_for(lambda: state() == "paused", timeout=15, what="auto-pause")
        # A request resumes it; it runs for another full timeout before pausing again.
        answer = raw.post(
            f"/v1/sandbox/{sandbox_id}/process/execute", json={"command": "echo back"}
        )
        assert answer.json()["stdout"] == "back\n"
        assert state() == "running"
        wait_for(lambda: state() == "paused", timeout=15, what="the second auto-pause")
        assert raw.delete(f"/v1/sandbox/{sandbox_id}").status_code == 204
