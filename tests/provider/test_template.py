"""``leap0.Template``'s provider as the engine drives it (``python -m pulumi.dynamic`` over
gRPC), against the reference backend and the tests' registries."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from pulumi_leap0.engine_protocol import ProviderProcess
from pulumi_leap0.provider import SandboxProvider, TemplateProvider
from pulumi_leap0.resource import SANDBOX_TYPE, TEMPLATE_TYPE
from tests.fixtures.backend import BackendServer
from tests.fixtures.registry import Registries

TEMPLATE_URN = f"urn:pulumi:dev::leap0::{TEMPLATE_TYPE}::template"
SANDBOX_URN = f"urn:pulumi:dev::leap0::{SANDBOX_TYPE}::sandbox"


def _name() -> str:
    return f"tpl-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def engine() -> Iterator[ProviderProcess]:
    with ProviderProcess(env={"LEAP0_API_KEY": "unused"}, provider=TemplateProvider(),
                         urn=TEMPLATE_URN) as process:
        process.configure({})
        yield process


def _process(backend: BackendServer, api_key: str, provider: Any, urn: str) -> ProviderProcess:
    process = ProviderProcess(provider=provider, urn=urn)
    process.configure({"leap0:apiKey": api_key, "leap0:baseUrl": backend.base_url})
    return process


@pytest.fixture
def live(backend: BackendServer, api_key: str) -> Iterator[ProviderProcess]:
    with _process(backend, api_key, TemplateProvider(), TEMPLATE_URN) as process:
        yield process


@pytest.mark.parametrize(("props", "field"), [
    ({"name": "a b", "uri": "busybox"}, "name"),
    ({"name": "system/x", "uri": "busybox"}, "name"),
    ({"name": "ok", "uri": "HTTP://x"}, "uri"),
    ({"name": "ok", "uri": "busybox", "credentials": {"type": "basic"}}, "credentials"),
])
def test_check_reports_the_apis_rules(engine: ProviderProcess, props: dict[str, Any],
                                      field: str) -> None:
    _, failures = engine.check(props)
    assert [prop for prop, _ in failures] == [field]


def test_diff_renames_in_place_replaces_on_uri_and_ignores_credentials(
        engine: ProviderProcess) -> None:
    old = {"name": "a", "uri": "r.io/x:1", "credentials_sha256": "f1"}
    assert not engine.diff("tpl-1", old, {"name": "a", "uri": "r.io/x:1"}).changes
    renamed = engine.diff("tpl-1", old, {"name": "b", "uri": "r.io/x:1"})
    assert renamed.changes and renamed.replaces == []
    moved = engine.diff("tpl-1", old, {"name": "a", "uri": "r.io/x:2"})
    assert moved.replaces == ["uri"] and moved.delete_before_replace
    creds = {"type": "basic", "username": "u", "password": "new"}
    assert not engine.diff("tpl-1", old, {"name": "a", "uri": "r.io/x:1",
                                          "credentials": creds}).changes


def test_create_rename_replace_and_delete(live: ProviderProcess,
                                          registries: Registries) -> None:
    inputs, failures = live.check({"name": _name(), "uri": registries.uri()})
    assert not failures
    id_, outputs = live.create(inputs)
    assert id_.startswith("tpl-") and outputs["digest"].startswith("sha256:")
    assert outputs["image_config"]["user"] == "app"
    # Refresh has no call to make: it reports what create recorded.
    read_id, refreshed, read_inputs = live.read(id_, outputs)
    assert (read_id, refreshed["digest"]) == (id_, outputs["digest"])
    read_inputs.pop("__provider", None)
    assert read_inputs == {"name": inputs["name"], "uri": inputs["uri"]}

    renamed = {**inputs, "name": _name()}
    assert live.diff(id_, outputs, renamed).replaces == []
    updated = live.update(id_, outputs, renamed)
    assert updated["name"] == renamed["name"] and updated["digest"] == outputs["digest"]

    # A new uri replaces: delete first (the name stays unique), then create anew.
    moved = {**renamed, "uri": registries.uri("v2")}
    assert live.diff(id_, updated, moved).replaces == ["uri"]
    live.delete(id_, updated)
    new_id, new_outputs = live.create(moved)
    assert new_id != id_ and new_outputs["digest"] != outputs["digest"]
    live.delete(new_id, new_outputs)
    live.delete(new_id, new_outputs)  # twice is fine: gone is what delete wants


def test_credentials_never_reach_the_outputs(live: ProviderProcess,
                                             registries: Registries) -> None:
    creds = {"type": "basic", "username": registries.username,
             "password": registries.password}
    inputs, failures = live.check({"name": _name(), "uri": registries.uri(auth=True),
                                   "credentials": creds})
    assert not failures
    id_, outputs = live.create(inputs)
    try:
        assert registries.password not in repr(outputs)
        assert outputs["credentials_sha256"]
    finally:
        live.delete(id_, outputs)


def test_a_program_chaining_template_and_sandbox(backend: BackendServer, api_key: str,
                                                 registries: Registries) -> None:
    """What `up` does for ``Sandbox(template_name=tpl.name)``: template first, then the
    sandbox on it; `destroy` the other way round, and the other order is refused with a
    message naming the sandbox."""
    with _process(backend, api_key, TemplateProvider(), TEMPLATE_URN) as templates, \
            _process(backend, api_key, SandboxProvider(), SANDBOX_URN) as sandboxes:
        tpl_id, tpl = templates.create(templates.check(
            {"name": _name(), "uri": registries.uri()})[0])
        box_inputs, failures = sandboxes.check({"template_name": tpl["name"]})
        assert not failures
        box_id, box = sandboxes.create(box_inputs)
        try:
            with pytest.raises(grpc.RpcError) as refused:
                templates.delete(tpl_id, tpl)
            assert box_id in str(refused.value.details())
        finally:
            sandboxes.delete(box_id, box)
        templates.delete(tpl_id, tpl)
