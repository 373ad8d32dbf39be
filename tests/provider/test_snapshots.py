"""``leap0.Snapshot`` and ``leap0.Sandbox(snapshot_name=...)`` as the engine drives them:
``python -m pulumi.dynamic`` over gRPC, against the reference backend over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pulumi.output import Unknown

from pulumi_leap0 import spec
from pulumi_leap0.client import Leap0Client
from pulumi_leap0.engine_protocol import ProviderProcess
from pulumi_leap0.provider import SnapshotProvider
from tests.fixtures.backend import BackendServer

TEMPLATE = "system/debian:bookworm"
SOURCE: dict[str, Any] = {"template_name": TEMPLATE, "network_policy": {"mode": "deny-all"}}


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[ProviderProcess, ProviderProcess]]:
    """Sandbox and snapshot providers for the calls that need no API (check and diff)."""
    with ProviderProcess(env={"LEAP0_API_KEY": "unused"}) as sandboxes, ProviderProcess(
            env={"LEAP0_API_KEY": "unused"}, provider=SnapshotProvider()) as snapshots:
        sandboxes.configure({})
        snapshots.configure({})
        yield sandboxes, snapshots


@pytest.fixture
def live(backend: BackendServer,
         api_key: str) -> Iterator[tuple[ProviderProcess, ProviderProcess]]:
    config = {"leap0:apiKey": api_key, "leap0:baseUrl": backend.base_url}
    with ProviderProcess() as sandboxes, ProviderProcess(provider=SnapshotProvider()) as snaps:
        sandboxes.configure(config)
        snaps.configure(config)
        yield sandboxes, snaps


# --- check and diff --------------------------------------------------------------------------


def test_snapshot_check_names_its_rules_and_chooses_a_name_once(
        engines: tuple[ProviderProcess, ProviderProcess]) -> None:
    _, snapshots = engines
    assert [f for f, _ in snapshots.check({})[1]] == ["sandbox_id"]
    assert [f for f, _ in snapshots.check({"sandbox_id": "vm-1"})[1]] == ["sandbox_id"]
    assert [f for f, _ in snapshots.check({"sandbox_id": "sbx-1", "name": "a b"})[1]] == ["name"]
    inputs, failures = snapshots.check({"sandbox_id": "sbx-1"})
    assert not failures and inputs["name"].startswith("snapshot-")
    assert inputs["kill_sandbox_after"] is False
    again, _ = snapshots.check({"sandbox_id": "sbx-1"}, olds=inputs)
    assert again["name"] == inputs["name"]  # kept from the old inputs: no replacement
    assert not snapshots.diff("snap-1", inputs, again).changes


@pytest.mark.parametrize("change", [{"sandbox_id": "sbx-2"}, {"name": "other"},
                                    {"kill_sandbox_after": True}])
def test_any_snapshot_change_replaces(engines: tuple[ProviderProcess, ProviderProcess],
                                      change: dict[str, Any]) -> None:
    _, snapshots = engines
    olds = snapshots.check({"sandbox_id": "sbx-1", "name": "one"})[0]
    news = snapshots.check({**olds, **change})[0]
    diff = snapshots.diff("snap-1", olds, news)
    assert diff.changes and diff.replaces == list(change) and diff.delete_before_replace


def test_a_sandbox_from_a_snapshot_must_not_set_what_the_snapshot_fixes(
        engines: tuple[ProviderProcess, ProviderProcess]) -> None:
    sandboxes, _ = engines
    _, failures = sandboxes.check({"snapshot_name": "warm", "template_name": TEMPLATE,
                                   "vcpu": 2, "memory": 2048, "env_vars": {"A": "b"}})
    assert sorted(f for f, _ in failures) == sorted(spec.SNAPSHOT_FIXES)
    assert all("snapshot" in reason for _, reason in failures)
    assert [f for f, _ in sandboxes.check({"snapshot_name": "not valid"})[1]] == [
        "snapshot_name"]
    assert [f for f, _ in sandboxes.check({"snapshot_name": "warm",
                                           "adopt_id": "sbx-1"})[1]] == ["adopt_id"]
    inputs, failures = sandboxes.check({"snapshot_name": "warm", "timeout": 600.0})
    assert not failures
    assert inputs["timeout"] == 600 and "template_name" not in inputs
    # Unknown in preview (the snapshot's name output of a resource not made yet).
    _, failures = sandboxes.check({"snapshot_name": Unknown()})
    assert not failures


def test_a_new_snapshot_name_replaces_the_sandbox(
        engines: tuple[ProviderProcess, ProviderProcess]) -> None:
    sandboxes, _ = engines
    olds = {**sandboxes.check({"snapshot_name": "one"})[0], "template_name": TEMPLATE,
            "vcpu": 2, "memory": 2048}  # as outputs report what the snapshot fixed
    assert not sandboxes.diff("sbx-1", olds, sandboxes.check({"snapshot_name": "one"})[0]).changes
    diff = sandboxes.diff("sbx-1", olds, sandboxes.check({"snapshot_name": "two"})[0])
    assert diff.replaces == ["snapshot_name"]


# --- Against the API -------------------------------------------------------------------------


def test_snapshot_restore_refresh_and_destroy_in_dependency_order(
        live: tuple[ProviderProcess, ProviderProcess], backend: BackendServer,
        api_key: str) -> None:
    sandboxes, snapshots = live
    source_id, source = sandboxes.create(sandboxes.check({**SOURCE, "vcpu": 2})[0])
    with Leap0Client(api_key, backend.base_url) as client:
        client.execute(source_id, spec.ExecuteRequest(command="echo seeded > ~/seed.txt"))

        snap_inputs = snapshots.check({"sandbox_id": source_id, "name": "warm"})[0]
        snap_id, snap = snapshots.create(snap_inputs)
        assert snap_id.startswith(spec.SNAPSHOT_ID_PREFIX)
        assert (snap["name"], snap["template_id"], snap["vcpu"]) == ("warm", TEMPLATE, 2)
        read_id, refreshed, read_inputs = snapshots.read(snap_id, snap)
        assert read_inputs["name"] == "warm"
        assert read_id == snap_id and not snapshots.diff(snap_id, refreshed, snap_inputs).changes

        restored_inputs = sandboxes.check({"snapshot_name": "warm",
                                           "network_policy": {"mode": "deny-all"}})[0]
        restored_id, restored = sandboxes.create(restored_inputs)
        assert restored_id != source_id
        assert (restored["template_name"], restored["vcpu"], restored["snapshot_name"]) == (
            TEMPLATE, 2, "warm")
        seen = client.execute(restored_id, spec.ExecuteRequest(command="cat ~/seed.txt"))
        assert seen.stdout == "seeded\n"
        # Nothing drifts: neither after create nor after a refresh.
        assert not sandboxes.diff(restored_id, restored, restored_inputs).changes
        _, again, again_inputs = sandboxes.read(restored_id, restored)
        assert not sandboxes.diff(restored_id, again, restored_inputs).changes
        assert "template_name" not in again_inputs

        # Destroy as the engine orders it: the restored sandbox, the snapshot, its source.
        sandboxes.delete(restored_id, again)
        snapshots.delete(snap_id, refreshed)
        snapshots.delete(snap_id, refreshed)  # deleting twice is success
        assert client.list_snapshots().total_items == 0
        sandboxes.delete(source_id, source)
        assert client.list_sandboxes().total_items == 0


def test_refresh_of_a_snapshot_deleted_out_of_band_drops_it(
        live: tuple[ProviderProcess, ProviderProcess], backend: BackendServer,
        api_key: str) -> None:
    sandboxes, snapshots = live
    source_id, source = sandboxes.create(sandboxes.check(SOURCE)[0])
    snap_id, snap = snapshots.create(snapshots.check({"sandbox_id": source_id})[0])
    with Leap0Client(api_key, backend.base_url) as client:
        client.delete_snapshot(snap_id)
    assert snapshots.read(snap_id, snap)[0] == ""
    assert snapshots.read(snap_id, {})[0] == ""  # Snapshot.get of one that is gone
    sandboxes.delete(source_id, source)


def test_restore_of_a_missing_snapshot_and_kill_sandbox_after(
        live: tuple[ProviderProcess, ProviderProcess], backend: BackendServer,
        api_key: str) -> None:
    import grpc

    sandboxes, snapshots = live
    with pytest.raises(grpc.RpcError, match="no snapshot named 'absent'"):
        sandboxes.create(sandboxes.check({"snapshot_name": "absent"})[0])
    source_id, _ = sandboxes.create(sandboxes.check(SOURCE)[0])
    snap_id, snap = snapshots.create(snapshots.check(
        {"sandbox_id": source_id, "name": "last", "kill_sandbox_after": True})[0])
    assert snap["kill_sandbox_after"] is True
    assert sandboxes.read(source_id, {})[0] == ""  # the source is gone
    _, got, _ = snapshots.read(snap_id, {})  # Snapshot.get: found through the list
    assert got["name"] == "last"
    snapshots.delete(snap_id, snap)
    with Leap0Client(api_key, backend.base_url) as client:
        assert client.list_sandboxes().total_items == 0
