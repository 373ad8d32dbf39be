"""The client's retry rules, shown with injected faults (where a mock transport is right)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

from pulumi_leap0 import spec
from pulumi_leap0.client import Leap0Client, Leap0Error, MissingCredentialsError, RetryPolicy

SANDBOX = {
    "id": "sbx-1", "template_id": "system/debian:bookworm", "vcpu": 1, "memory": 1024,
    "disk": 1024, "timeout": 300, "state": "running", "auto_pause": False,
    "created_at": "2026-11-28T00:00:00Z",
}

Handler = Callable[[httpx.Request], httpx.Response]


class Faults:
    """Answers each request with the next scripted response, and remembers every request."""

    def __init__(self, *responses: httpx.Response | type[httpx.TransportError]) -> None:
        self.script = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, type):
            raise step("injected", request=request)
        return step


def make_client(faults: Faults, sleeps: list[float], **kwargs: object) -> Leap0Client:
    return Leap0Client(
        "key-123",
        "http://leap0.test",
        transport=httpx.MockTransport(faults),
        retry=RetryPolicy(max_retries=3, sleep=sleeps.append),
        **kwargs,  # type: ignore[arg-type]
    )


def ok(body: object = SANDBOX, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


def test_429_is_retried_on_any_call_and_retry_after_is_honoured() -> None:
    faults = Faults(httpx.Response(429, headers={"Retry-After": "2"}), ok(status=201))
    sleeps: list[float] = []
    with make_client(faults, sleeps) as client:
        created = client.create_sandbox(spec.validate_create({"template_name": "t"}))
    assert created.id == "sbx-1"
    assert [r.method for r in faults.requests] == ["POST", "POST"]
    assert sleeps == [2.0]


def test_503_on_create_is_not_retried() -> None:
    faults = Faults(httpx.Response(503, json={"message": "busy"}), ok(status=201))
    sleeps: list[float] = []
    with make_client(faults, sleeps) as client, pytest.raises(Leap0Error) as caught:
        client.create_sandbox(spec.validate_create({"template_name": "t"}))
    assert caught.value.status == 503
    assert len(faults.requests) == 1
    assert sleeps == []


def test_connection_reset_on_create_is_not_retried() -> None:
    faults = Faults(httpx.ReadError, ok(status=201))
    sleeps: list[float] = []
    with make_client(faults, sleeps) as client, pytest.raises(Leap0Error) as caught:
        client.create_sandbox(spec.validate_create({"template_name": "t"}))
    assert caught.value.status == 0
    assert len(faults.requests) == 1


@pytest.mark.parametrize("fault", [httpx.Response(503), httpx.Response(500), httpx.ConnectError,
                                   httpx.ReadError])
def test_get_is_retried_through_5xx_and_resets(
    fault: httpx.Response | type[httpx.TransportError],
) -> None:
    faults = Faults(fault, fault, ok())
    sleeps: list[float] = []
    with make_client(faults, sleeps) as client:
        assert client.get_sandbox("sbx-1").state == spec.SandboxState.RUNNING
    assert len(faults.requests) == 3
    assert len(sleeps) == 2


def test_delete_is_retried_through_5xx() -> None:
    faults = Faults(httpx.Response(502), httpx.Response(204))
    sleeps: list[float] = []
    with make_client(faults, sleeps) as client:
        client.delete_sandbox("sbx-1")
    assert [r.method for r in faults.requests] == ["DELETE", "DELETE"]


def test_retries_are_bounded_and_the_last_answer_is_raised() -> None:
    faults = Faults(httpx.Response(503, json={"message": "still busy"}))
    sleeps: list[float] = []
    with make_client(faults, sleeps) as client, pytest.raises(Leap0Error) as caught:
        client.get_sandbox("sbx-1")
    assert caught.value.status == 503
    assert caught.value.message == "still busy"
    assert len(faults.requests) == 4  # the first try and three retries


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=1.0)
    for attempt in range(8):
        delays = [policy.delay(attempt, None) for _ in range(200)]
        ceiling = min(1.0, 0.1 * 2**attempt)
        assert all(0 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jitter: retries of many clients spread out
    assert policy.delay(0, 3.0) == 3.0


def test_validation_errors_carry_their_fields() -> None:
    body = {"message": "Invalid request", "errors": [{"field": "memory", "error": "must be even"}]}
    faults = Faults(httpx.Response(400, json=body))
    with make_client(faults, []) as client, pytest.raises(Leap0Error) as caught:
        client.create_sandbox(spec.validate_create({"template_name": "t"}))
    assert caught.value.errors == [spec.FieldError(field="memory", error="must be even")]
    assert "memory: must be even" in str(caught.value)


def test_404_is_not_retried() -> None:
    faults = Faults(httpx.Response(404, json={"message": "sandbox not found"}))
    with make_client(faults, []) as client, pytest.raises(Leap0Error) as caught:
        client.get_sandbox("sbx-x")
    assert caught.value.not_found
    assert len(faults.requests) == 1


def test_bearer_header_by_default_and_leap0_header_as_an_option() -> None:
    faults = Faults(ok())
    with make_client(faults, []) as client:
        client.get_sandbox("sbx-1")
    with make_client(faults, [], auth_header="leap0-authorization") as client:
        client.get_sandbox("sbx-1")
    first, second = faults.requests
    assert first.headers["authorization"] == "Bearer key-123"
    assert second.headers["leap0-authorization"] == "key-123"
    assert "authorization" not in second.headers


def test_credentials_come_from_the_sdk_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAP0_API_KEY", "env-key")
    monkeypatch.setenv("LEAP0_BASE_URL", "http://from-env.test/")
    client = Leap0Client()
    assert client.base_url == "http://from-env.test"
    monkeypatch.delenv("LEAP0_API_KEY")
    with pytest.raises(MissingCredentialsError, match=r"LEAP0_API_KEY.*leap0:apiKey"):
        Leap0Client()


def test_requests_are_the_normalized_wire_form() -> None:
    faults = Faults(ok(status=201))
    request = spec.validate_create(
        {"template_name": "t", "vcpu": 2.0,
         "network_policy": {"mode": "custom", "allow_domains": ["B.com", "a.com"]}}
    )
    with make_client(faults, []) as client:
        client.create_sandbox(request)
    sent = json.loads(faults.requests[0].content)
    assert sent["vcpu"] == 2
    assert sent["network_policy"]["allow_domains"] == ["a.com", "b.com"]


def test_execute_waits_longer_than_the_command_may_run() -> None:
    faults = Faults(ok({"exit_code": 0, "stdout": "hi\n", "stderr": ""}))
    with make_client(faults, []) as client:
        result = client.execute("sbx-1", spec.ExecuteRequest(command="echo hi", timeout=120))
    assert result.stdout == "hi\n"
    assert faults.requests[0].extensions["timeout"]["read"] >= 120


def test_a_program_importing_the_resources_does_not_load_httpx() -> None:
    # A Pulumi program and a preview's provider process never send a request: the client's
    # HTTP stack (~80 ms of import) is loaded by the first client made, not before.
    probe = (
        "import sys, pulumi_leap0.resource, pulumi_leap0.provider; "
        "assert 'httpx' not in sys.modules, 'httpx imported'; "
        "from pulumi_leap0.client import Leap0Client; "
        "Leap0Client('key', 'http://127.0.0.1:1').close(); "
        "assert 'httpx' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", probe], check=True)
