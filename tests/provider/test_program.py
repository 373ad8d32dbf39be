"""The resource as a Pulumi program sees it, with the engine replaced by pulumi's mocks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from typing import Any

import pulumi
import pytest

import pulumi_leap0 as leap0
from pulumi_leap0.resource import SANDBOX_TYPE

SECRET_SIG = "4dabf18193072939515e22adb298388d"


class Recorder(pulumi.runtime.Mocks):
    """Remembers what each resource registered; answers with its inputs as outputs."""

    def __init__(self) -> None:
        self.registered: dict[str, pulumi.runtime.MockResourceArgs] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.registered[args.name] = args
        outputs = {**args.inputs, "state": "running", "template_id": "system/debian:bookworm"}
        return (args.resource_id or f"sbx-{args.name}", outputs)

    def call(
        self, args: pulumi.runtime.MockCallArgs
    ) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


@pytest.fixture
def engine() -> Iterator[Recorder]:
    # Pulumi's runtime runs on the thread's current event loop; other tests' asyncio.run()
    # leaves none behind.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    recorder = Recorder()
    pulumi.runtime.set_mocks(recorder, preview=False)
    yield recorder
    asyncio.set_event_loop(None)
    loop.close()


def is_secret(registered: pulumi.runtime.MockResourceArgs, name: str) -> bool:
    value = registered.inputs.get(name)
    return isinstance(value, dict) and SECRET_SIG in value


def the_ci_runner() -> leap0.Sandbox:
    return leap0.Sandbox(
        "ci-runner",
        template_name="system/debian:bookworm", vcpu=2, memory=2048, timeout=3600,
        auto_pause=True, env_vars={"STAGE": "ci"},
        network_policy=leap0.NetworkPolicyArgs(
            mode="custom", allow_domains=["pypi.org"],
            transforms=[leap0.TransformArgs(domain="api.x.com",
                                            inject_headers={"Authorization": "Bearer t"})],
        ),
        mounts=[leap0.MountArgs(bucket="models", mount_path="/models",
                                endpoint="https://s3.example.com",
                                access_key_id="AK", secret_access_key="SK")],
    )


@pulumi.runtime.test
def test_inputs_are_named_as_the_api_names_them(engine: Recorder) -> Awaitable[None]:
    box = the_ci_runner()

    def check(_: Any) -> None:
        registered = engine.registered["ci-runner"]
        assert registered.typ == SANDBOX_TYPE
        inputs = registered.inputs
        assert (inputs["template_name"], inputs["vcpu"], inputs["memory"]) == (
            "system/debian:bookworm", 2, 2048)
        assert (inputs["timeout"], inputs["auto_pause"]) == (3600, True)
        assert "__provider" in inputs

    return box.urn.apply(check)


@pulumi.runtime.test
def test_credentials_are_secret_even_when_passed_as_plain_strings(
    engine: Recorder,
) -> Awaitable[None]:
    box = the_ci_runner()

    def check(_: Any) -> None:
        registered = engine.registered["ci-runner"]
        for name in ("env_vars", "mounts", "network_policy"):
            assert is_secret(registered, name), name
        assert not is_secret(registered, "template_name")
        assert not is_secret(registered, "vcpu")

    return box.urn.apply(check)


@pulumi.runtime.test
def test_outputs_carrying_credentials_are_secret(engine: Recorder) -> Awaitable[None]:
    box = the_ci_runner()

    async def check() -> None:
        assert await box.env_vars.is_secret()
        assert await box.mounts.is_secret()
        assert not await box.template_name.is_secret()
        assert not await box.state.is_secret()
        assert await box.state.future() == "running"

    return pulumi.Output.from_input(check())  # type: ignore[arg-type]


@pulumi.runtime.test
def test_mounts_without_credentials_stay_readable(engine: Recorder) -> Awaitable[None]:
    box = leap0.Sandbox(
        "open", template_name="system/debian:bookworm",
        mounts=[{"bucket": "public", "mount_path": "/data", "endpoint": "https://s3.local"}],
    )

    def check(_: Any) -> None:
        registered = engine.registered["open"]
        assert not is_secret(registered, "mounts")
        assert registered.inputs["mounts"][0]["type"] == "object-storage"

    return box.urn.apply(check)


@pulumi.runtime.test
def test_typed_args_and_keywords_are_the_same_sandbox(engine: Recorder) -> Awaitable[None]:
    by_args = leap0.Sandbox("by-args", leap0.SandboxArgs(template_name="t", vcpu=2))
    by_keywords = leap0.Sandbox("by-keywords", template_name="t", vcpu=2)

    def check(_: Any) -> None:
        first = dict(engine.registered["by-args"].inputs)
        second = dict(engine.registered["by-keywords"].inputs)
        assert first == second

    return pulumi.Output.all(by_args.urn, by_keywords.urn).apply(check)


@pulumi.runtime.test
def test_get_reads_an_existing_sandbox(engine: Recorder) -> Awaitable[None]:
    box = leap0.Sandbox.get("existing", "sbx-123")

    def check(id_: str) -> None:
        assert id_ == "sbx-123"
        assert engine.registered["existing"].typ == SANDBOX_TYPE

    return box.id.apply(check)


def test_template_name_is_required() -> None:
    with pytest.raises(TypeError, match="template_name"):
        leap0.Sandbox("nameless")


def outside_secrets(value: Any) -> list[str]:
    """Every string in ``value`` that is not inside a secret-wrapped value."""
    if isinstance(value, dict):
        if SECRET_SIG in value:
            return []
        return [s for v in value.values() for s in outside_secrets(v)]
    if isinstance(value, list):
        return [s for v in value for s in outside_secrets(v)]
    return [value] if isinstance(value, str) else []


@pulumi.runtime.test
def test_no_credential_is_registered_in_plaintext(engine: Recorder) -> Awaitable[None]:
    box = the_ci_runner()

    def check(_: Any) -> None:
        plain = outside_secrets(dict(engine.registered["ci-runner"].inputs))
        for credential in ("ci", "Bearer t", "AK", "SK"):
            assert credential not in plain, credential
        assert "system/debian:bookworm" in plain  # what is not a credential stays readable

    return box.urn.apply(check)


@pulumi.runtime.test
def test_adopt_id_and_create_timeout_are_inputs(engine: Recorder) -> Awaitable[None]:
    box = leap0.Sandbox("adopted", template_name="t", adopt_id="sbx-123", create_timeout=60)

    def check(_: Any) -> None:
        inputs = engine.registered["adopted"].inputs
        assert (inputs["adopt_id"], inputs["create_timeout"]) == ("sbx-123", 60)

    return box.urn.apply(check)


@pulumi.runtime.test
def test_template_credentials_are_secret_and_a_sandbox_can_use_its_name(
        engine: Recorder) -> Awaitable[None]:
    from pulumi_leap0.resource import TEMPLATE_TYPE

    tpl = leap0.Template(
        "app-image", name="my-app", uri="ghcr.io/acme/app:1",
        credentials=leap0.RegistryCredentialsArgs(type="basic", username="bot",
                                                  password="registry-token"))
    box = leap0.Sandbox("app", template_name=tpl.name)

    def check(_: Any) -> None:
        registered = engine.registered["app-image"]
        assert registered.typ == TEMPLATE_TYPE
        assert is_secret(registered, "credentials")
        plain = outside_secrets(dict(registered.inputs))
        assert "registry-token" not in plain and "bot" not in plain
        assert "ghcr.io/acme/app:1" in plain
        # The sandbox takes the template's (output) name.
        assert engine.registered["app"].inputs["template_name"] == "my-app"

    return pulumi.Output.all(tpl.urn, box.urn).apply(check)
