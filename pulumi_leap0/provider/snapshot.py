"""``leap0.Snapshot``'s provider: inputs, check, diff, create, read, update, delete, in that
order, laid out as ``sandbox.py`` is.

* Every input replaces: the API changes nothing of a snapshot in place.
* ``name`` is optional for the API (it generates one), but refresh finds a snapshot by
  name through the list call (the API has no call that reads one snapshot), so an omitted
  name is chosen here, in ``check``, once, and kept from the old inputs after that, as
  Pulumi's own providers autoname.
* ``kill_sandbox_after`` deletes the source sandbox once the snapshot is stored: a
  ``leap0.Sandbox`` of the same stack is then gone, and its next refresh drops it.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from pulumi import dynamic

from pulumi_leap0 import spec
from pulumi_leap0.client import Leap0Client, Leap0Error
from pulumi_leap0.provider import normal_form
from pulumi_leap0.provider.base import (
    Leap0Provider,
    ProviderError,
    check_result,
    create_error,
    delete_and_wait,
    diff_result,
)

# --- Inputs in normal form -------------------------------------------------------------------

INPUTS = ("sandbox_id", "name", "kill_sandbox_after")
#: What the API reports about a snapshot; never inputs.
COMPUTED_OUTPUTS = ("template_id", "vcpu", "memory", "disk", "created_at")
_API_INPUTS = tuple(spec.SnapshotCreateRequest.model_fields)


def _inputs_of(request: spec.SnapshotCreateRequest) -> dict[str, Any]:
    return {"name": request.name, "kill_sandbox_after": request.kill_sandbox_after}


def normal_inputs(props: Mapping[str, Any]) -> tuple[dict[str, Any], list[dynamic.CheckFailure]]:
    given = {n: props[n] for n in _API_INPUTS if props.get(n) is not None}
    inputs, failures = normal_form.normalize(
        given, lambda data: spec.validate(spec.SnapshotCreateRequest, data), _inputs_of, {})
    if props.get("sandbox_id") is None:
        failures.append(dynamic.CheckFailure("sandbox_id", "is required"))
    failures += normal_form.own_input(
        props, "sandbox_id", normal_form.prefixed(spec.SANDBOX_ID_PREFIX),
        f"must be a sandbox id ({spec.SANDBOX_ID_PREFIX}...)", inputs)
    return inputs, failures


def generated_name() -> str:
    return f"snapshot-{secrets.token_hex(6)}"


class SnapshotProvider(Leap0Provider):
    """Leap0 snapshots, reached with the stack's credentials. Pickled into state: keep it bare."""

    __module__ = "pulumi_leap0.provider"

    # --- check and diff --------------------------------------------------------------------

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.CheckResult:
        if news.get("name") is None:
            news = {**news, "name": olds.get("name") or generated_name()}
        return check_result(news, normal_inputs(news))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        new, old = normal_inputs(news)[0], normal_inputs(olds)[0]
        changed = normal_form.changed(new, old, INPUTS)
        return diff_result(news, olds, changed, INPUTS)

    # --- create ----------------------------------------------------------------------------

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        request, sandbox_id = _request(props)
        with self.client() as client:
            try:
                snapshot = client.create_snapshot(sandbox_id, request)
            except Leap0Error as exc:
                raise _create_error(exc) from None
        return dynamic.CreateResult(snapshot.id, _outputs(sandbox_id, request, snapshot))

    # --- read ------------------------------------------------------------------------------

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        name = props.get("name")
        with self.client() as client:
            snapshot = client.find_snapshot(str(name)) if name else _by_id(client, id_)
        if snapshot is None or snapshot.id != id_:
            # Gone, or the name now belongs to another snapshot: this one is gone.
            return dynamic.ReadResult("", {})
        outputs = {k: v for k, v in props.items() if k != "__provider" and v is not None}
        outputs.update(name=snapshot.name, **_computed(snapshot))
        outputs.setdefault("kill_sandbox_after", False)
        return dynamic.ReadResult(id_, outputs, {k: outputs[k] for k in INPUTS if k in outputs})

    # --- update ----------------------------------------------------------------------------

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        # Only a new provider version gets here (every input replaces): keep every output.
        kept = {k: v for k, v in olds.items() if k != "__provider"}
        return dynamic.UpdateResult({**kept, **normal_inputs(news)[0]})

    # --- delete ----------------------------------------------------------------------------

    def delete(self, id_: str, _props: dict[str, Any]) -> None:
        with self.client() as client:
            # 409 while a sandbox is being restored from it: delete_and_wait waits it out.
            delete_and_wait(lambda: client.delete_snapshot(id_), lambda: True,
                            what=f"snapshot {id_}")


# --- Helpers for the calls above, in the same order ------------------------------------------


def _request(props: Mapping[str, Any]) -> tuple[spec.SnapshotCreateRequest, str]:
    inputs, failures = normal_inputs(props)
    if failures:
        raise ProviderError("invalid snapshot inputs: " + "; ".join(
            f"{f.property}: {f.reason}" for f in failures))
    request = spec.SnapshotCreateRequest(name=inputs["name"],
                                         kill_sandbox_after=inputs["kill_sandbox_after"])
    return request, str(inputs["sandbox_id"])


def _create_error(exc: Leap0Error) -> ProviderError:
    return create_error(
        exc, "snapshot",
        refused=(f"Snapshot names are unique in an organization, which keeps at most "
                 f"{spec.MAX_SNAPSHOTS_PER_ORG} snapshots, and only a running or paused "
                 "sandbox can be snapshot: pick another name, or delete a snapshot you no "
                 "longer need."),
        listing="GET /v1/snapshots",
    )


def _outputs(sandbox_id: str, request: spec.SnapshotCreateRequest,
             snapshot: spec.Snapshot) -> dict[str, Any]:
    return {"sandbox_id": sandbox_id, "name": snapshot.name,
            "kill_sandbox_after": request.kill_sandbox_after, **_computed(snapshot)}


def _computed(snapshot: spec.Snapshot) -> dict[str, Any]:
    return {"template_id": snapshot.template_id, "vcpu": snapshot.vcpu,
            "memory": snapshot.memory, "disk": snapshot.disk, "created_at": snapshot.created_at}


def _by_id(client: Leap0Client, snapshot_id: str) -> spec.Snapshot | None:
    """``Snapshot.get`` reads with no old outputs: walk the list for the id."""
    return next((s for s in client.iter_snapshots() if s.id == snapshot_id), None)
