"""The provider called in-process, for what the gRPC server cannot show: injected faults
(429, 5xx, a sandbox that never runs, a delete that fails) and calls with engine-shaped
props that serialization would tidy away (``None`` values from ``Sandbox.get``)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from pulumi_leap0 import provider as provider_module
from pulumi_leap0 import spec
from pulumi_leap0.client import Leap0Client, RetryPolicy
from pulumi_leap0.provider import base as provider_base
from pulumi_leap0.provider import template as template_provider
from tests.fixtures.backend import BackendServer
from tests.fixtures.registry import Registries

BASE: dict[str, Any] = {"template_name": "system/debian:bookworm"}
Handler = Callable[[httpx.Request, Callable[[], httpx.Response]], httpx.Response | None]


class Faults:
    """A transport in front of the real backend: ``handler`` may answer instead of it."""

    def __init__(self) -> None:
        self.handler: Handler = lambda _request, _forward: None
        self.seen: list[str] = []
        self._real = httpx.HTTPTransport()

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(f"{request.method} {request.url.path}")

        def forward() -> httpx.Response:
            response = self._real.handle_request(request)
            body = response.read()
            return httpx.Response(response.status_code, content=body, headers=response.headers)

        return self.handler(request, forward) or forward()


@pytest.fixture
def faults(
    backend: BackendServer, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Faults]:
    faults = Faults()

    class FaultyClient(Leap0Client):
        def __init__(self, key: str, base_url: str | None = None) -> None:
            # No waiting between retries: the tests count retries, not seconds.
            super().__init__(key, base_url, transport=httpx.MockTransport(faults.handle),
                             retry=RetryPolicy(sleep=lambda _s: None))

    monkeypatch.setattr(provider_base, "Leap0Client", FaultyClient)
    monkeypatch.setenv("LEAP0_API_KEY", api_key)
    monkeypatch.setenv("LEAP0_BASE_URL", backend.base_url)
    yield faults


def sandboxes(backend: BackendServer, api_key: str) -> list[str]:
    with Leap0Client(api_key, backend.base_url) as client:
        return [s.id for s in client.list_sandboxes(page_size=100).items]


def failing_first(method: str, path_part: str, status: int, times: int = 1) -> Handler:
    remaining = [times]

    def handler(request: httpx.Request, _forward: Callable[[], httpx.Response]) -> Any:
        if request.method == method and path_part in request.url.path and remaining[0] > 0:
            remaining[0] -= 1
            return httpx.Response(status, json={"message": "injected"},
                                  headers={"Retry-After": "0"} if status == 429 else {})
        return None

    return handler


def test_a_429_on_create_is_retried_and_makes_one_sandbox(
    faults: Faults, backend: BackendServer, api_key: str
) -> None:
    faults.handler = failing_first("POST", "/v1/sandbox/", 429, times=2)
    result = provider_module.SandboxProvider().create(dict(BASE))
    assert faults.seen.count("POST /v1/sandbox/") == 3
    assert sandboxes(backend, api_key) == [result.id]
    provider_module.SandboxProvider().delete(result.id, {})


def test_a_5xx_on_create_is_not_retried_and_says_so(
    faults: Faults, backend: BackendServer, api_key: str
) -> None:
    faults.handler = failing_first("POST", "/v1/sandbox/", 502)
    with pytest.raises(provider_module.SandboxError, match="502"):
        provider_module.SandboxProvider().create(dict(BASE))
    assert faults.seen.count("POST /v1/sandbox/") == 1  # a blind retry could make two
    assert sandboxes(backend, api_key) == []


def test_5xx_on_reads_and_deletes_are_retried(
    faults: Faults, backend: BackendServer, api_key: str
) -> None:
    provider = provider_module.SandboxProvider()
    created = provider.create(dict(BASE))
    faults.handler = failing_first("GET", created.id, 503, times=2)
    assert provider.read(created.id, created.outs).id == created.id
    faults.handler = failing_first("DELETE", created.id, 500, times=2)
    provider.delete(created.id, created.outs)
    assert sandboxes(backend, api_key) == []


def stuck_starting(request: httpx.Request, forward: Callable[[], httpx.Response]) -> Any:
    """Every answer about a sandbox says it is still starting."""
    response = forward()
    if request.method in ("GET", "POST") and response.status_code in (200, 201):
        data = json.loads(response.content)
        if "state" in data:
            data["state"] = "starting"
            return httpx.Response(response.status_code, json=data)
    return response


def test_a_create_that_never_runs_gives_up_within_its_bound_and_leaves_nothing(
    faults: Faults, backend: BackendServer, api_key: str
) -> None:
    faults.handler = stuck_starting
    with pytest.raises(provider_module.SandboxError, match="create_timeout"):
        provider_module.SandboxProvider().create({**BASE, "create_timeout": 0.3})
    polls = [s for s in faults.seen if s.startswith("GET /v1/sandbox/")]
    assert 3 <= len(polls) <= 8  # 20 ms doubling, not a fixed 1 s sleep
    assert sandboxes(backend, api_key) == []


def test_a_cleanup_that_fails_keeps_the_original_error_and_names_the_sandbox(
    faults: Faults, backend: BackendServer, api_key: str
) -> None:
    def stuck_and_undeletable(request: httpx.Request, forward: Callable[[], httpx.Response]) -> Any:
        if request.method == "DELETE":
            return httpx.Response(403, json={"message": "injected"})
        return stuck_starting(request, forward)

    faults.handler = stuck_and_undeletable
    with pytest.raises(provider_module.SandboxError, match="create_timeout") as raised:
        provider_module.SandboxProvider().create({**BASE, "create_timeout": 0.1})
    (left,) = sandboxes(backend, api_key)
    assert any(left in note and "delete it" in note for note in raised.value.__notes__)
    with Leap0Client(api_key, backend.base_url) as client:
        client.delete_sandbox(left)


def test_get_with_the_props_the_engine_sends_fills_everything_from_the_api(
    faults: Faults, backend: BackendServer, api_key: str
) -> None:
    """Sandbox.get registers every input as None; the engine passes them to Read as such."""
    with Leap0Client(api_key, backend.base_url) as client:
        made = client.create_sandbox(spec.validate_create(
            {**BASE, "vcpu": 2, "network_policy": {"mode": "deny-all"}}))
    props = dict.fromkeys(("template_name", "env_vars", "mounts", "vcpu", "memory", "timeout",
                           "auto_pause", "network_policy", "state", "template_id", "disk",
                           "created_at", "create_timeout", "adopt_id"))
    result = provider_module.SandboxProvider().read(made.id, {**props, "__provider": "p"})
    assert result.id == made.id
    outs = result.outs
    assert outs["template_name"] == BASE["template_name"]
    assert outs["network_policy"]["mode"] == "deny-all"
    assert (outs["vcpu"], outs["state"], outs["mounts"]) == (2, "running", [])
    assert "__provider" not in outs
    provider_module.SandboxProvider().delete(made.id, outs)


def test_errors_never_carry_credentials(faults: Faults) -> None:
    """A create the API rejects: the message names fields, never values."""
    secret = "super-secret-value-123"

    def reject(request: httpx.Request, _forward: Callable[[], httpx.Response]) -> Any:
        if request.method == "POST":
            return httpx.Response(400, json={"message": "Invalid request", "errors": [
                {"field": "mounts[0].secret_access_key", "error": "is not accepted"}]})
        return None

    faults.handler = reject
    mount = {"bucket": "bkt", "mount_path": "/m", "endpoint": "http://s3.local",
             "access_key_id": "AK", "secret_access_key": secret}
    with pytest.raises(provider_module.SandboxError) as raised:
        provider_module.SandboxProvider().create({**BASE, "env_vars": {"T": secret},
                                                  "mounts": [mount]})
    assert "mounts[0].secret_access_key" in str(raised.value)
    assert secret not in str(raised.value)


def test_a_template_delete_waits_out_a_sandbox_going_then_names_one_that_stays(
    faults: Faults, backend: BackendServer, api_key: str, registries: Registries,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A sandbox restored from a snapshot uses its template without depending on it in the
    # program, so the engine may delete the two at once (tests/cli/test_images.py).
    templates = provider_module.TemplateProvider()
    sandboxes_ = provider_module.SandboxProvider()
    made = templates.create({"name": f"inuse-{uuid.uuid4().hex[:8]}", "uri": registries.uri()})
    box = sandboxes_.create({"template_name": made.outs["name"]})
    monkeypatch.setattr(template_provider, "IN_USE_WAIT_S", 1.0)
    with pytest.raises(provider_module.ProviderError, match=box.id):
        templates.delete(made.id, made.outs)

    monkeypatch.setattr(template_provider, "IN_USE_WAIT_S", 60.0)
    going = threading.Timer(1.0, sandboxes_.delete, (box.id, box.outs))
    going.start()
    templates.delete(made.id, made.outs)  # returns once the sandbox has gone
    going.join()
    assert faults.seen.count(f"DELETE /v1/template/{made.id}") >= 2
