"""A custom network policy through the API: created with the official SDK, enforced by
the backend's runner, and its credentials never handed back.

The backend is started with ``--egress-resolver`` and ``--egress-ca-file`` pointing at the
test hosts (``tests/hosts``), as an operator would point it at a private resolver and PKI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.backend.helpers import TEMPLATE, http, sdk
from tests.fixtures.backend import BackendServer, running_backend
from tests.fixtures.git_server import PORT as GIT_PORT
from tests.fixtures.git_server import GitServer
from tests.hosts import TestHosts

SECRET = "Bearer api-egress-secret-93ab"


@pytest.fixture(scope="module")
def egress_backend(hosts: TestHosts) -> Iterator[BackendServer]:
    with running_backend(["--egress-resolver", hosts.resolver,
                          "--egress-ca-file", str(hosts.ca_file)]) as server:
        yield server


def test_custom_policy_with_transform_is_enforced_through_the_api(
        egress_backend: BackendServer, hosts: TestHosts) -> None:
    api_key = egress_backend.new_api_key()
    with sdk(egress_backend, api_key) as leap0:
        box = leap0.sandboxes.create(template_name=TEMPLATE, network_policy={
            "mode": "custom",
            "allow_domains": ["allowed.leap0.test"],
            "transforms": [{"domain": "api.transform.leap0.test",
                            "inject_headers": {"X-Api-Key": SECRET}}],
        })
        try:
            def run(command: str) -> tuple[int, str]:
                result = box.process.execute(command=command, timeout=30)
                return result.exit_code, result.stdout.strip()

            assert run("curl -sS -m 8 http://allowed.leap0.test/") == (
                0, f"{hosts.address('allowed')} allowed.leap0.test")
            assert run("curl -sS -m 8 http://forbidden.leap0.test/")[0] != 0
            assert run(f"curl -sS -m 8 http://{hosts.address('forbidden')}/")[0] != 0
            before = len(hosts.requests())
            assert run("curl -sS -m 8 https://api.transform.leap0.test/")[0] == 0
            assert dict(hosts.requests()[before]["headers"])["x-api-key"] == SECRET
            with http(egress_backend, api_key) as raw:
                body = raw.get(f"/v1/sandbox/{box.id}").text
            assert SECRET.split()[1] not in body
            assert "api-egress-secret" not in egress_backend.log()
        finally:
            leap0.sandboxes.delete(box.id)


def test_a_restart_starts_a_dead_filter_again(
        egress_backend: BackendServer, hosts: TestHosts) -> None:
    import json
    import signal

    api_key = egress_backend.new_api_key()
    with http(egress_backend, api_key) as raw:
        created = raw.post("/v1/sandbox", json={"template_name": TEMPLATE, "network_policy": {
            "mode": "custom", "allow_domains": ["allowed.leap0.test"]}})
        assert created.status_code == 201, created.text
        sandbox_id = created.json()["id"]

        def curl(url: str) -> int:
            result = raw.post(f"/v1/sandbox/{sandbox_id}/process/execute",
                              json={"command": f"curl -sS -m 3 {url}", "timeout": 20})
            return int(result.json()["exit_code"])

        try:
            assert curl("http://allowed.leap0.test/") == 0
            record = egress_backend.data_dir / "sandboxes" / sandbox_id / "egress.json"
            os.kill(json.loads(record.read_text())["pid"], signal.SIGKILL)
            assert curl("http://allowed.leap0.test/") != 0  # cut off, not unfiltered
            egress_backend.restart()
            assert curl("http://allowed.leap0.test/") == 0
            assert curl(f"http://{hosts.address('forbidden')}/") != 0
        finally:
            raw.delete(f"/v1/sandbox/{sandbox_id}")


def test_resume_starts_a_filter_that_died_while_paused(
        egress_backend: BackendServer, hosts: TestHosts) -> None:
    import json
    import signal

    api_key = egress_backend.new_api_key()
    with http(egress_backend, api_key) as raw:
        created = raw.post("/v1/sandbox", json={"template_name": TEMPLATE, "network_policy": {
            "mode": "custom", "allow_domains": ["allowed.leap0.test"]}})
        assert created.status_code == 201, created.text
        sandbox_id = created.json()["id"]
        try:
            assert raw.post(f"/v1/sandbox/{sandbox_id}/pause").status_code == 201
            record = egress_backend.data_dir / "sandboxes" / sandbox_id / "egress.json"
            os.kill(json.loads(record.read_text())["pid"], signal.SIGKILL)  # dies on thaw
            result = raw.post(f"/v1/sandbox/{sandbox_id}/process/execute",  # resumes it
                              json={"command": "curl -sS -m 5 http://allowed.leap0.test/",
                                    "timeout": 20}).json()
            assert result["exit_code"] == 0, result
        finally:
            raw.delete(f"/v1/sandbox/{sandbox_id}")


def test_a_git_clone_reaches_only_the_names_a_custom_policy_allows(
        egress_backend: BackendServer, hosts: TestHosts, git_server: GitServer) -> None:
    repo = git_server.repo("named-policy")
    api_key = egress_backend.new_api_key()
    with sdk(egress_backend, api_key) as leap0, http(egress_backend, api_key) as raw:
        box = leap0.sandboxes.create(template_name=TEMPLATE, network_policy={
            "mode": "custom", "allow_domains": ["allowed.leap0.test"]})
        try:
            def clone(host: str, path: str) -> tuple[int, str]:
                answer = raw.post(f"/v1/sandbox/{box.id}/git/clone", json={
                    "url": f"http://{host}:{GIT_PORT}/public/{repo}", "path": path},
                    timeout=120)
                return answer.status_code, answer.text

            assert clone("allowed.leap0.test", "/tmp/a")[0] == 200
            before = len(git_server.requests())
            status, text = clone("forbidden.leap0.test", "/tmp/f")
            assert status == 400 and "unable to access" in text, text
            # The same server by another name: the filter never dialled it.
            assert len(git_server.requests()) == before
        finally:
            leap0.sandboxes.delete(box.id)
