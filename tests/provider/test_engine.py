"""The provider as the engine drives it: ``python -m pulumi.dynamic`` over gRPC, against the
reference backend over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from pulumi.output import Unknown
from pulumi.runtime import rpc

from pulumi_leap0 import spec
from pulumi_leap0.client import Leap0Client
from pulumi_leap0.engine_protocol import ProviderProcess
from pulumi_leap0.provider import FINGERPRINT, mount_states
from tests.fixtures.backend import BackendServer
from tests.fixtures.s3 import S3
from tests.support import require

TEMPLATE = "system/debian:bookworm"
BASE: dict[str, Any] = {"template_name": TEMPLATE}
MOUNT = {"bucket": "models", "mount_path": "/models", "endpoint": "http://s3.local"}


@pytest.fixture(scope="module")
def engine() -> Iterator[ProviderProcess]:
    """A provider process for the calls that need no API (check and diff)."""
    with ProviderProcess(env={"LEAP0_API_KEY": "unused"}) as process:
        process.configure({})
        yield process


@pytest.fixture
def live(backend: BackendServer, api_key: str) -> Iterator[ProviderProcess]:
    """A provider process configured, as the engine does, from stack config."""
    with ProviderProcess() as process:
        process.configure({"leap0:apiKey": api_key, "leap0:baseUrl": backend.base_url})
        yield process


# --- check -----------------------------------------------------------------------------------

CHECK_FAILURES = [
    ({"vcpu": 9}, "vcpu"),
    ({"vcpu": 0}, "vcpu"),
    ({"memory": 511}, "memory"),
    ({"memory": 8194}, "memory"),
    ({"timeout": 28801}, "timeout"),
    ({"template_name": ""}, "template_name"),
    ({"env_vars": {"1BAD": "x"}}, "env_vars.1BAD"),
    ({"mounts": [{"bucket": "bkt", "mount_path": f"/m{i}", "endpoint": "http://s3.local"}
                 for i in range(9)]}, "mounts"),
    ({"mounts": [{"bucket": "bkt", "mount_path": "data", "endpoint": "http://s3.local"}]},
     "mounts[0].mount_path"),
    ({"mounts": [{"bucket": "bkt", "mount_path": "/d", "endpoint": "http://s3.local",
                  "prefix": "docs"}]}, "mounts[0].prefix"),
    ({"mounts": [{"bucket": "bkt", "mount_path": "/d", "endpoint": "http://s3.local",
                  "read_only": False}]}, "mounts[0].read_only"),
    ({"network_policy": {"mode": "custom", "allow_domains": ["ok.com", "not a domain"]}},
     "network_policy.allow_domains[1]"),
    ({"network_policy": {"mode": "custom", "allow_cidrs": ["10.0.0.0/99"]}},
     "network_policy.allow_cidrs[0]"),
    ({"network_policy": {"mode": "custom",
                         "allow_domains": [f"d{i}.example.com" for i in range(51)]}},
     "network_policy.allow_domains"),
    ({"network_policy": {"mode": "sometimes"}}, "network_policy.mode"),
    ({"create_timeout": -1}, "create_timeout"),
    ({"adopt_id": "not-a-sandbox"}, "adopt_id"),
]


@pytest.mark.parametrize(("change", "field"), CHECK_FAILURES, ids=[f for _, f in CHECK_FAILURES])
def test_check_reports_each_rule_on_its_property(
    engine: ProviderProcess, change: dict[str, Any], field: str
) -> None:
    _, failures = engine.check({**BASE, **change})
    assert [prop for prop, _ in failures] == [field]
    assert all(reason for _, reason in failures)


def test_check_reports_every_failure_at_once(engine: ProviderProcess) -> None:
    _, failures = engine.check({"vcpu": 9.0, "memory": 3.0})
    assert {prop for prop, _ in failures} == {"template_name", "vcpu", "memory"}


def test_check_normalizes_floats_defaults_and_case(engine: ProviderProcess) -> None:
    inputs, failures = engine.check(
        {**BASE, "vcpu": 2.0, "network_policy": {"mode": "custom", "allow_domains": ["PyPI.org"]}}
    )
    assert failures == []
    assert inputs["vcpu"] == 2 and inputs["memory"] == spec.MEMORY_DEFAULT_MIB
    assert inputs["network_policy"]["allow_domains"] == ["pypi.org"]


def test_check_tolerates_unknowns_in_preview(engine: ProviderProcess) -> None:
    inputs, failures = engine.check(
        {**BASE, "vcpu": rpc.UNKNOWN, "env_vars": {"TOKEN": rpc.UNKNOWN}, "memory": 511}
    )
    assert [prop for prop, _ in failures] == ["memory"]
    inputs, failures = engine.check({**BASE, "vcpu": rpc.UNKNOWN})
    assert failures == []
    assert isinstance(inputs["vcpu"], Unknown)


UNKNOWN_BESIDE_AN_ERROR = [
    ("a sibling field of an unknown",
     {"mounts": [{"bucket": rpc.UNKNOWN, "mount_path": "rel", "endpoint": "http://s3.local"}]},
     ["mounts[0].mount_path"]),
    ("a sibling item of an unknown",
     {"mounts": [{"bucket": rpc.UNKNOWN, "mount_path": "/a", "endpoint": "http://s3.local"},
                 {"bucket": "bkt", "mount_path": "/b", "endpoint": "http://s3.local",
                  "prefix": "no-slash"}]},
     ["mounts[1].prefix"]),
    ("an unknown template", {"template_name": rpc.UNKNOWN, "vcpu": 9}, ["vcpu"]),
    ("an unknown mode", {"network_policy": {"mode": rpc.UNKNOWN, "allow_domains": ["bad domain"]}},
     ["network_policy.allow_domains[0]"]),
    ("an unknown env value", {"env_vars": {"OK": rpc.UNKNOWN, "1BAD": "x"}}, ["env_vars.1BAD"]),
    ("a whole unknown item", {"mounts": [rpc.UNKNOWN] * 9}, ["mounts"]),
]


@pytest.mark.parametrize(("props", "fields"), [(p, f) for _, p, f in UNKNOWN_BESIDE_AN_ERROR],
                         ids=[name for name, _, _ in UNKNOWN_BESIDE_AN_ERROR])
def test_only_failures_under_an_unknown_are_dropped(
    engine: ProviderProcess, props: dict[str, Any], fields: list[str]
) -> None:
    _, failures = engine.check({**BASE, **props})
    assert [prop for prop, _ in failures] == fields


def test_unknowns_alone_pass_check_and_keep_the_rest_normalized(engine: ProviderProcess) -> None:
    inputs, failures = engine.check({"template_name": rpc.UNKNOWN, "vcpu": 2.0,
                                     "mounts": [{**MOUNT, "bucket": rpc.UNKNOWN}]})
    assert failures == []
    assert isinstance(inputs["template_name"], Unknown)
    assert isinstance(inputs["mounts"][0]["bucket"], Unknown)
    assert inputs["vcpu"] == 2 and inputs["memory"] == spec.MEMORY_DEFAULT_MIB


# --- diff ------------------------------------------------------------------------------------

FULL: dict[str, Any] = {
    "template_name": TEMPLATE, "env_vars": {"STAGE": "ci"}, "vcpu": 2, "memory": 2048,
    "timeout": 600, "auto_pause": True, "mounts": [MOUNT],
    "network_policy": {"mode": "custom", "allow_domains": ["pypi.org", "a.com"],
                       "allow_cidrs": ["10.0.0.0/8", "192.168.0.0/16"],
                       "transforms": [{"domain": "x.com"}, {"domain": "api.y.com"}]},
}


def outputs_of(engine: ProviderProcess, props: dict[str, Any]) -> dict[str, Any]:
    """What state would hold after create: the checked inputs plus computed outputs."""
    inputs, failures = engine.check(props)
    assert failures == []
    mounts = [{**m, "id": f"mnt-{i}"} for i, m in enumerate(mount_states(inputs["mounts"]))]
    return {**inputs, "mounts": mounts, "state": "running", "template_id": TEMPLATE,
            "disk": 1024, "created_at": "2026-11-28T00:00:00Z"}


REPLACING_CHANGES = [
    ("template_name", "other/template"),
    ("env_vars", {"STAGE": "prod"}),
    ("vcpu", 3),
    ("memory", 4096),
    ("timeout", 601),
    ("auto_pause", False),
    ("network_policy", {"mode": "deny-all"}),
    ("network_policy", None),
]


@pytest.mark.parametrize(("name", "value"), REPLACING_CHANGES,
                         ids=[f"{n}={v}" for n, v in REPLACING_CHANGES])
def test_a_change_to_an_immutable_input_replaces_exactly_it(
    engine: ProviderProcess, name: str, value: Any
) -> None:
    olds = outputs_of(engine, FULL)
    news = {**FULL, name: value}
    diff = engine.diff("sbx-1", olds, news)
    assert diff.changes
    assert diff.replaces == [name]
    assert diff.delete_before_replace


@pytest.mark.parametrize("mounts", [
    [],
    [MOUNT, {"bucket": "data", "mount_path": "/data", "endpoint": "http://s3.local"}],
    [{**MOUNT, "prefix": "v2/"}],
    [{**MOUNT, "access_key_id": "AK", "secret_access_key": "SK"}],
], ids=["removed", "added", "changed", "credentials"])
def test_a_change_to_mounts_alone_is_an_update_in_place(
    engine: ProviderProcess, mounts: list[dict[str, Any]]
) -> None:
    diff = engine.diff("sbx-1", outputs_of(engine, FULL), {**FULL, "mounts": mounts})
    assert diff.changes
    assert diff.replaces == []


EQUIVALENT = [
    ("defaults spelled out", BASE, {**BASE, "vcpu": 1, "memory": 1024, "timeout": 300,
                                    "auto_pause": False, "env_vars": {}, "mounts": []}),
    ("no policy is allow-all", BASE, {**BASE, "network_policy": {"mode": "allow-all"}}),
    ("floats from the engine", FULL, {**FULL, "vcpu": 2.0, "memory": 2048.0}),
    ("domain case and order", FULL, {**FULL, "network_policy": {
        **FULL["network_policy"], "allow_domains": ["A.com", "PYPI.org"]}}),
    ("cidr order", FULL, {**FULL, "network_policy": {
        **FULL["network_policy"], "allow_cidrs": ["192.168.0.0/16", "10.0.0.0/8"]}}),
    ("transform order", FULL, {**FULL, "network_policy": {
        **FULL["network_policy"], "transforms": [{"domain": "api.y.com"}, {"domain": "x.com"}]}}),
    ("mount order", {**FULL, "mounts": [MOUNT, {**MOUNT, "mount_path": "/a"}]},
     {**FULL, "mounts": [{**MOUNT, "mount_path": "/a"}, MOUNT]}),
    ("mount defaults", FULL, {**FULL, "mounts": [{**MOUNT, "prefix": "", "read_only": True,
                                                  "type": "object-storage"}]}),
]


@pytest.mark.parametrize(("olds", "news"), [(o, n) for _, o, n in EQUIVALENT],
                         ids=[name for name, _, _ in EQUIVALENT])
def test_equivalent_inputs_are_no_change(
    engine: ProviderProcess, olds: dict[str, Any], news: dict[str, Any]
) -> None:
    diff = engine.diff("sbx-1", outputs_of(engine, olds), news)
    assert not diff.changes
    assert diff.replaces == []


KEYS = {"access_key_id": "AKIAOLD", "secret_access_key": "old-secret-value"}


def test_mount_outputs_hold_a_fingerprint_not_the_credentials(engine: ProviderProcess) -> None:
    olds = outputs_of(engine, {**FULL, "mounts": [{**MOUNT, **KEYS}]})
    (mount,) = olds["mounts"]
    assert "access_key_id" not in mount and "secret_access_key" not in mount
    assert len(mount[FINGERPRINT]) == 64
    assert "old-secret-value" not in repr(olds)


@pytest.mark.parametrize(("keys", "changes"), [
    (KEYS, False),
    ({**KEYS, "secret_access_key": "rotated"}, True),
    ({**KEYS, "access_key_id": "AKIANEW"}, True),
    ({}, True),
], ids=["same", "secret rotated", "key id changed", "removed"])
def test_diff_sees_a_credential_change_through_the_fingerprint(
    engine: ProviderProcess, keys: dict[str, str], changes: bool
) -> None:
    olds = outputs_of(engine, {**FULL, "mounts": [{**MOUNT, **KEYS}]})
    diff = engine.diff("sbx-1", olds, {**FULL, "mounts": [{**MOUNT, **keys}]})
    assert diff.changes is changes
    assert diff.replaces == []


def test_outputs_of_an_older_provider_with_credentials_compare_equal(
    engine: ProviderProcess,
) -> None:
    olds = outputs_of(engine, FULL)
    olds["mounts"] = [{**MOUNT, "type": "object-storage", "prefix": "", "read_only": True,
                       "id": "mnt-0", **KEYS}]
    assert not engine.diff("sbx-1", olds, {**FULL, "mounts": [{**MOUNT, **KEYS}]}).changes


def test_adopt_id_is_not_compared(engine: ProviderProcess) -> None:
    olds = {**outputs_of(engine, FULL), "adopt_id": "sbx-old"}
    assert not engine.diff("sbx-old", olds, FULL).changes


def test_unknowns_in_preview_are_reported_as_possible_changes(engine: ProviderProcess) -> None:
    olds = outputs_of(engine, FULL)
    diff = engine.diff("sbx-1", olds, {**FULL, "vcpu": rpc.UNKNOWN, "mounts": rpc.UNKNOWN})
    assert diff.changes
    assert diff.replaces == ["vcpu"]


def test_a_new_provider_alone_is_an_update(engine: ProviderProcess) -> None:
    olds = {**outputs_of(engine, FULL), "__provider": "an-older-pickle"}
    diff = engine.diff("sbx-1", olds, FULL)
    assert diff.changes
    assert diff.replaces == []


# --- create, read, update, delete against the reference backend ------------------------------


def sandboxes(backend: BackendServer, api_key: str) -> list[str]:
    with Leap0Client(api_key, backend.base_url) as client:
        return [s.id for s in client.list_sandboxes(page_size=100).items]


def mounts_supported(backend: BackendServer) -> bool:
    health = httpx.get(f"{backend.base_url}/healthz").json()
    return bool(health["capabilities"].get("object_storage_mounts"))


def test_create_with_every_input_then_refresh_and_delete(
    live: ProviderProcess, backend: BackendServer, api_key: str, s3: S3
) -> None:
    props = {k: v for k, v in FULL.items() if k != "mounts"}
    # Where the backend cannot attach mounts, test_mounts_* say so; the rest is tested here.
    with_mount = mounts_supported(backend)
    if with_mount:
        props["mounts"] = [{"bucket": s3.bucket, "mount_path": "/models", "prefix": "release/",
                            "endpoint": s3.endpoint, "access_key_id": s3.access_key_id,
                            "secret_access_key": s3.secret_access_key}]
    props["create_timeout"] = 120
    props["network_policy"] = {"mode": "custom", "allow_domains": ["pypi.org"],
                               "transforms": [{"domain": "api.x.com",
                                               "inject_headers": {"X-Key": "k"}}]}
    inputs, failures = live.check(props)
    assert failures == []
    id_, outputs = live.create(inputs)
    assert id_.startswith(spec.SANDBOX_ID_PREFIX)
    assert outputs["state"] == "running"
    assert (outputs["vcpu"], outputs["memory"], outputs["timeout"]) == (2, 2048, 600)
    assert outputs["auto_pause"] is True
    assert outputs["env_vars"] == {"STAGE": "ci"}
    assert outputs["disk"] > 0 and outputs["created_at"]
    assert outputs["network_policy"]["transforms"][0]["inject_headers"] == {"x-key": "k"}
    assert outputs["create_timeout"] == 120
    with Leap0Client(api_key, backend.base_url) as client:
        result = client.execute(id_, spec.ExecuteRequest(command="echo $STAGE"))
        assert result.stdout == "ci\n"
        if with_mount:
            assert outputs["mounts"][0]["id"].startswith(spec.MOUNT_ID_PREFIX)
            listing = client.execute(id_, spec.ExecuteRequest(command="ls /models"))
            assert "readme.txt" in listing.stdout

    read_id, refreshed, read_inputs = live.read(id_, outputs)
    assert read_id == id_
    assert not live.diff(id_, refreshed, inputs).changes
    assert read_inputs["env_vars"] == {"STAGE": "ci"}

    live.delete(id_, outputs)
    assert sandboxes(backend, api_key) == []
    live.delete(id_, outputs)  # deleting twice is success


def test_refresh_after_an_out_of_band_delete_reports_gone(
    live: ProviderProcess, backend: BackendServer, api_key: str
) -> None:
    id_, outputs = live.create(live.check(BASE)[0])
    with Leap0Client(api_key, backend.base_url) as client:
        client.delete_sandbox(id_)
    read_id, _, _ = live.read(id_, outputs)
    assert read_id == ""


def test_a_paused_sandbox_is_not_drift(
    live: ProviderProcess, backend: BackendServer, api_key: str
) -> None:
    inputs = live.check({**BASE, "env_vars": {"A": "1"}})[0]
    id_, outputs = live.create(inputs)
    with Leap0Client(api_key, backend.base_url) as client:
        client.pause_sandbox(id_)
    read_id, refreshed, _ = live.read(id_, outputs)
    assert read_id == id_
    assert refreshed["state"] == "paused"
    assert not live.diff(id_, refreshed, inputs).changes
    live.delete(id_, refreshed)


def test_replacement_works_at_the_organization_limit(
    live: ProviderProcess, backend: BackendServer, api_key: str
) -> None:
    inputs = live.check(BASE)[0]
    created = [live.create(inputs) for _ in range(spec.MAX_SANDBOXES_PER_ORG)]
    id_, outputs = created[0]
    news = live.check({**BASE, "vcpu": 2})[0]
    diff = live.diff(id_, outputs, news)
    assert diff.replaces == ["vcpu"] and diff.delete_before_replace

    # Create-before-delete would be refused, and says why and what to do.
    with pytest.raises(grpc.RpcError) as refused:
        live.create(news)
    assert "at most 3 sandboxes" in str(refused.value.details())
    assert len(sandboxes(backend, api_key)) == spec.MAX_SANDBOXES_PER_ORG

    # The engine honours delete_before_replace: delete, then create.
    live.delete(id_, outputs)
    new_id, new_outputs = live.create(news)
    assert new_outputs["vcpu"] == 2
    assert sorted(sandboxes(backend, api_key)) == sorted(
        [new_id, created[1][0], created[2][0]]
    )


def test_a_provider_only_change_keeps_every_output(live: ProviderProcess) -> None:
    inputs = live.check({**BASE, "env_vars": {"A": "1"}})[0]
    id_, outputs = live.create(inputs)
    updated = live.update(id_, {**outputs, "__provider": "an-older-pickle"}, inputs)
    for key in ("state", "template_id", "disk", "created_at", "env_vars", "vcpu", "mounts"):
        assert updated[key] == outputs[key], key
    live.delete(id_, updated)


def test_a_missing_key_names_both_ways_to_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from pulumi_leap0.provider import SandboxError, SandboxProvider

    monkeypatch.delenv("LEAP0_API_KEY", raising=False)
    with pytest.raises(SandboxError, match=r"leap0:apiKey.*LEAP0_API_KEY"):
        SandboxProvider().read("sbx-1", {})


def test_get_reads_a_sandbox_made_elsewhere(
    live: ProviderProcess, backend: BackendServer, api_key: str
) -> None:
    """``Sandbox.get``: the engine's Read with no old outputs, only the id."""
    with Leap0Client(api_key, backend.base_url) as client:
        made = client.create_sandbox(spec.validate_create(
            {**BASE, "vcpu": 2, "network_policy": {"mode": "deny-all"}}))
    read_id, outputs, _ = live.read(made.id, {})
    assert read_id == made.id
    assert outputs["vcpu"] == 2
    assert outputs["template_name"] == TEMPLATE
    assert outputs["network_policy"]["mode"] == "deny-all"
    live.delete(made.id, outputs)


def test_mounts_are_updated_in_place_keeping_their_ids(
    live: ProviderProcess, backend: BackendServer, api_key: str, s3: S3
) -> None:
    require(bool(httpx.get(f"{backend.base_url}/healthz").json()["capabilities"]
                 .get("object_storage_mounts")), "the backend cannot attach mounts here")

    def bucket(path: str, prefix: str = "release/") -> dict[str, Any]:
        return {"bucket": s3.bucket, "mount_path": path, "endpoint": s3.endpoint,
                "prefix": prefix, "access_key_id": s3.access_key_id,
                "secret_access_key": s3.secret_access_key}

    inputs = live.check({**BASE, "mounts": [bucket("/models")]})[0]
    id_, outputs = live.create(inputs)
    first_id = outputs["mounts"][0]["id"]
    assert first_id.startswith(spec.MOUNT_ID_PREFIX)

    news = live.check({**BASE, "mounts": [bucket("/models", "staging/"), bucket("/more")]})[0]
    diff = live.diff(id_, outputs, news)
    assert diff.changes and diff.replaces == []
    updated = live.update(id_, outputs, news)
    by_path = {m["mount_path"]: m for m in updated["mounts"]}
    assert by_path["/models"]["id"] == first_id  # changed in place
    assert by_path["/models"]["prefix"] == "staging/"
    assert by_path["/more"]["id"].startswith(spec.MOUNT_ID_PREFIX)
    with Leap0Client(api_key, backend.base_url) as client:
        listing = client.execute(id_, spec.ExecuteRequest(command="ls /models /more"))
        assert "secret-plan.txt" in listing.stdout and "readme.txt" in listing.stdout
        assert {m.id for m in client.get_sandbox(id_).mounts} == {
            m["id"] for m in updated["mounts"]}

    removed = live.update(id_, updated, live.check(BASE)[0])
    assert removed["mounts"] == []
    assert not live.diff(id_, removed, BASE).changes
    live.delete(id_, removed)


def test_the_pickled_provider_is_small_and_carries_no_credential() -> None:
    import base64

    from pulumi.dynamic.config import Config
    from pulumi.dynamic.dynamic import ConfigureRequest, serialize_provider

    from pulumi_leap0.provider import SandboxProvider

    provider = SandboxProvider()
    provider.configure(ConfigureRequest(Config({"leap0:apiKey": "key-that-must-not-leak",
                                                "leap0:baseUrl": "http://x"}, "p")))
    pickled = serialize_provider(provider)
    assert len(pickled) < 200
    assert b"key-that-must-not-leak" not in base64.b64decode(pickled)


#: ``__provider`` exactly as the first release wrote it into every sandbox's state: a
#: reference to the class by its dotted path, with no fields.
STATE_OF_THE_FIRST_RELEASE = (
    "gASVMwAAAAAAAACMFXB1bHVtaV9sZWFwMC5wcm92aWRlcpSMD1NhbmRib3hQcm92aWRlcpSTlCmBlH2UYi4="
)


def test_state_written_by_the_first_release_is_refreshed_diffed_and_destroyed(
    live: ProviderProcess, backend: BackendServer, api_key: str
) -> None:
    """Refresh and destroy use the provider stored in state, not the program's."""
    inputs = live.check(BASE)[0]
    id_, outputs = live.create(inputs)
    stored = {**outputs, "__provider": STATE_OF_THE_FIRST_RELEASE}
    read_id, refreshed, _ = live.read(id_, stored)
    assert read_id == id_ and refreshed["state"] == "running"
    # Today's provider pickles to the same bytes: upgrading is no change to any sandbox.
    assert not live.diff(id_, stored, inputs).changes
    live.delete(id_, stored)
    assert sandboxes(backend, api_key) == []


def test_every_provider_is_pickled_by_a_path_that_moving_its_code_keeps() -> None:
    """State names each provider by module and class: that must be the package, not the
    module the code happens to live in, or the next move strands every stack."""
    import pulumi_leap0.provider as package
    from pulumi_leap0.provider.base import Leap0Provider

    providers = Leap0Provider.__subclasses__()
    assert package.SandboxProvider in providers
    for provider in providers:
        assert provider.__module__ == package.__name__, provider
        assert getattr(package, provider.__name__) is provider


def test_rotated_mount_credentials_are_patched_in_place_and_never_stored(
    live: ProviderProcess, backend: BackendServer, api_key: str, s3: S3
) -> None:
    require(bool(httpx.get(f"{backend.base_url}/healthz").json()["capabilities"]
                 .get("object_storage_mounts")), "the backend cannot attach mounts here")
    mount = {"bucket": s3.bucket, "mount_path": "/models", "endpoint": s3.endpoint,
             "prefix": "release/", "access_key_id": s3.access_key_id,
             "secret_access_key": s3.secret_access_key}
    inputs = live.check({**BASE, "mounts": [mount]})[0]
    id_, outputs = live.create(inputs)
    assert s3.secret_access_key not in repr(outputs)
    first = outputs["mounts"][0]

    # Same key id, another secret: moto accepts any pair, so the mount keeps working.
    rotated = live.check({**BASE, "mounts": [{**mount, "secret_access_key": "rotated-0"}]})[0]
    diff = live.diff(id_, outputs, rotated)
    assert diff.changes and diff.replaces == []
    updated = live.update(id_, outputs, rotated)
    (after,) = updated["mounts"]
    assert after["id"] == first["id"]
    assert after[FINGERPRINT] != first[FINGERPRINT]
    assert "rotated-0" not in repr(updated)
    assert not live.diff(id_, updated, rotated).changes

    read_id, refreshed, read_inputs = live.read(id_, updated)
    assert read_id == id_
    assert refreshed["mounts"] == updated["mounts"]
    assert not live.diff(id_, refreshed, rotated).changes
    assert "rotated-0" not in repr(read_inputs)
    live.delete(id_, refreshed)


def test_adopting_a_matching_sandbox_takes_it_over(
    live: ProviderProcess, backend: BackendServer, api_key: str
) -> None:
    program = {**BASE, "vcpu": 2, "env_vars": {"A": "1"},
               "network_policy": {"mode": "custom", "allow_domains": ["pypi.org"]}}
    with Leap0Client(api_key, backend.base_url) as client:
        made = client.create_sandbox(spec.validate_create(program))
    inputs = live.check({**program, "adopt_id": made.id})[0]
    id_, outputs = live.create(inputs)
    assert id_ == made.id
    assert outputs["vcpu"] == 2 and outputs["state"] == "running"
    assert outputs["adopt_id"] == made.id
    assert sandboxes(backend, api_key) == [made.id]
    assert not live.diff(id_, outputs, live.check(program)[0]).changes
    live.delete(id_, outputs)
    assert sandboxes(backend, api_key) == []


def test_adopting_a_sandbox_that_differs_names_the_difference_and_keeps_it(
    live: ProviderProcess, backend: BackendServer, api_key: str
) -> None:
    with Leap0Client(api_key, backend.base_url) as client:
        made = client.create_sandbox(spec.validate_create({**BASE, "memory": 2048}))
    inputs = live.check({**BASE, "vcpu": 2, "adopt_id": made.id})[0]
    with pytest.raises(grpc.RpcError) as refused:
        live.create(inputs)
    assert "vcpu, memory differ" in str(refused.value.details())
    assert sandboxes(backend, api_key) == [made.id]  # not ours: never deleted

    with pytest.raises(grpc.RpcError) as missing:
        live.create(live.check({**BASE, "adopt_id": "sbx-nonexistent"})[0])
    assert "no such sandbox" in str(missing.value.details())
