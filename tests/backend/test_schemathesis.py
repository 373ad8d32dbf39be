"""Leap0's own OpenAPI document, fuzzed against the reference backend with schemathesis.

For the operations the backend serves: no answer is a 5xx, and every answer with a
documented status code matches the documented schema and content type.

Three rewrites keep the run meaningful and local:

* Half the cases address a real sandbox of the test's organization (recreated whenever a
  case deleted or stopped it), so the generated bodies reach the lifecycle and the runner,
  not only the 404 path.
* ``template_name`` is the real template, so creates can succeed; each created sandbox is
  deleted at once so the quota does not turn every later create into a 409.
* Mount endpoints are pointed at a closed local port: generated URLs must never send
  traffic off this machine. The target sandbox's network policy is deny-all for the same
  reason (generated commands run in it).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.backend.helpers import TEMPLATE
from tests.fixtures.backend import BackendServer
from tests.support import shared_data_dir

OPERATIONS = [
    "createSandbox",
    "getSandbox",
    "deleteSandbox",
    "listSandboxes",
    "pauseSandbox",
    "stopSandbox",
    "startSandbox",
    "addSandboxMount",
    "updateSandboxMount",
    "deleteSandboxMount",
    "processExecute",
    "filesystemLS",
    "filesystemStat",
    "filesystemMkdir",
    "filesystemWriteFile",
    "filesystemReadFile",
    "filesystemDelete",
    "filesystemExists",
    "gitClone",
    "gitStatus",
    "gitBranches",
    "gitDiffUnstaged",
    "gitDiffStaged",
    "gitDiff",
    "gitReset",
    "gitLog",
    "gitShow",
    "gitCreateBranch",
    "gitCheckoutBranch",
    "gitDeleteBranch",
    "gitAdd",
    "gitCommit",
    "gitPush",
    "gitPull",
    "createSnapshot",
    "listSnapshots",
    "deleteSnapshot",
    "restoreSnapshot",
    "filesystemWriteFiles",
    "filesystemReadFiles",
    "filesystemSetPermissions",
    "filesystemGlob",
    "filesystemGrep",
    "filesystemEditFile",
    "filesystemEditFiles",
    "filesystemMove",
    "filesystemCopy",
    "filesystemTree",
    "getSandboxUserHomeDir",
    "getSandboxWorkdir",
    "listPtySessions",
    "createPtySession",
    "getPtySession",
    "deletePtySession",
    "resizePtySession",
    "connectPtySession",
    "createPresignedURL",
    "deletePresignedURL",
]
LOCAL_ENDPOINT = "http://127.0.0.1:9"
LOCAL_IMAGE = "127.0.0.1:9/fuzz/image:v1"
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


class Target:
    """The organization the fuzzer acts in, and one live sandbox of it."""

    def __init__(self, backend: BackendServer) -> None:
        self.key = backend.new_api_key()
        self.headers = {"Authorization": f"Bearer {self.key}"}
        self.http = httpx.Client(base_url=backend.base_url, headers=self.headers, timeout=60)
        self.sandbox_id = ""
        self.turn = 0

    def live_sandbox(self) -> str:
        if self.sandbox_id:
            answer = self.http.get(f"/v1/sandbox/{self.sandbox_id}")
            if answer.status_code == 200 and answer.json()["state"] in ("running", "paused"):
                return self.sandbox_id
            if answer.status_code == 200:
                self.http.delete(f"/v1/sandbox/{self.sandbox_id}")
        created = self.http.post(
            "/v1/sandbox",
            json={"template_name": TEMPLATE, "network_policy": {"mode": "deny-all"}},
        )
        assert created.status_code == 201, created.text
        self.sandbox_id = created.json()["id"]
        return self.sandbox_id

    def close(self) -> None:
        for item in self.http.get("/v1/sandboxes", params={"page-size": 100}).json()["items"]:
            self.http.delete(f"/v1/sandbox/{item['id']}")
        for item in self.http.get("/v1/snapshots", params={"page-size": 100}).json()["items"]:
            self.http.delete(f"/v1/snapshot/{item['id']}")
        self.http.close()


@pytest.fixture(scope="module")
def target(backend: BackendServer) -> Iterator[Target]:
    fuzz = Target(backend)
    yield fuzz
    fuzz.close()


@pytest.fixture
def leap0_openapi() -> Any:
    document = shared_data_dir() / "leap0-openapi.yaml"
    return schemathesis.openapi.from_path(document).include(operation_id=OPERATIONS)


schema = schemathesis.pytest.from_fixture("leap0_openapi")


def _keep_local(body: Any) -> None:
    if not isinstance(body, dict):
        return
    if isinstance(body.get("endpoint"), str):
        body["endpoint"] = LOCAL_ENDPOINT
    if isinstance(body.get("uri"), str):
        # A template upload pulls from the registry a uri names: only from this host's
        # discard port here, so that the fuzzer makes the backend dial nowhere else.
        body["uri"] = LOCAL_IMAGE
    mounts = body.get("mounts")
    if isinstance(mounts, list):
        for mount in mounts:
            if isinstance(mount, dict) and "endpoint" in mount:
                mount["endpoint"] = LOCAL_ENDPOINT


# One test runs every operation's cases, so its bound grows with the list (the suite's 300 s
# is less than 34 operations take on a loaded machine).
@pytest.mark.timeout(20 * len(OPERATIONS))
@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_backend_conforms_to_the_leap0_openapi_document(
    case: Any, backend: BackendServer, target: Target
) -> None:
    target.turn += 1
    if "sandboxID" in (case.path_parameters or {}) and target.turn % 2 == 0:
        case.path_parameters["sandboxID"] = target.live_sandbox()
    if case.operation.definition.raw.get("operationId") == "createSandbox" and isinstance(
        case.body, dict
    ) and isinstance(case.body.get("template_name"), str):
        case.body["template_name"] = TEMPLATE
    _keep_local(case.body)

    response = case.call(base_url=backend.base_url, headers=target.headers)
    case.validate_response(response, checks=CHECKS)
    if case.operation.method.upper() == "POST" and case.operation.path in (
            "/v1/sandbox/", "/v1/snapshot/restore") and response.status_code == 201:
        target.http.delete(f"/v1/sandbox/{response.json()['id']}")
