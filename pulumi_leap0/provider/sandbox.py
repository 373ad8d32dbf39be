"""``leap0.Sandbox``'s provider: inputs, check, diff, create, read, update, delete, in that
order (Terraform's scaffolding), each mapped to ``client.py``.

* Replacing a sandbox deletes the old one first: an organization holds at most three
  sandboxes, and create-before-delete would be refused with 409 exactly when a team is
  using all three.
* ``env_vars``, mount endpoints and credentials, and injected header values never come back
  from the API: outputs keep what the program last sent (credentials only as a fingerprint).
* ``snapshot_name``: created by restore. The snapshot fixes ``spec.SNAPSHOT_FIXES``
  (template, vcpu, memory, env_vars), so check fails naming each one also set; outputs
  report them from the API and diff leaves them out. Everything else is as for any sandbox:
  no ``network_policy`` is allow-all (not the snapshot's), mounts are attached after.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi import dynamic

from pulumi_leap0 import spec
from pulumi_leap0.client import Leap0Client, Leap0Error
from pulumi_leap0.provider import mounts, normal_form
from pulumi_leap0.provider.base import (
    CREATE_TIMEOUT_DEFAULT_S,
    Leap0Provider,
    ProviderError,
    check_result,
    create_error,
    delete_and_wait,
    deleted_on_failure,
    diff_result,
    found,
    wait_until,
)

# --- Inputs in normal form -------------------------------------------------------------------

#: Inputs of our own, not of the API. ``create_timeout``: how long create waits for the
#: sandbox to run. ``adopt_id``: an existing sandbox that create takes over instead of
#: making a new one (``pulumi import`` does not work for dynamic providers).
#: ``snapshot_name``: a snapshot that create restores instead of booting the template.
PROVIDER_INPUTS = ("create_timeout", "adopt_id", "snapshot_name")
#: What the API reports about a sandbox; never inputs, never a reason to update.
COMPUTED_OUTPUTS = ("state", "template_id", "disk", "created_at")

_API_INPUTS = tuple(spec.SandboxCreateRequest.model_fields)
# adopt_id only matters when the sandbox is created: it is compared by nobody.
_COMPARED = (*_API_INPUTS, "create_timeout", "snapshot_name")
#: What replaces the sandbox: what no API call changes, and the snapshot it came from.
REPLACES = (*spec.REPLACE_ON_CHANGE, "snapshot_name")
# template_name is the one required field: an unknown one is stood in for, and so is the
# template of a snapshot, which restore takes from the snapshot.
_STAND_INS = {"template_name": "unknown"}
_SNAPSHOT_TEMPLATE = "snapshot"
_STARTING = {spec.SandboxState.STARTING}


def _with_mount_type(value: Any) -> Any:
    # Users write MountArgs(bucket=..., ...) without a type; the API requires "object-storage".
    if isinstance(value, list):
        return [
            {"type": spec.MOUNT_TYPE, **m} if isinstance(m, Mapping) and "type" not in m else m
            for m in value
        ]
    return value


def _given(props: Mapping[str, Any]) -> dict[str, Any]:
    """The API inputs that were set (None is "not set", as the engine sends it); for a
    sandbox from a snapshot, those the snapshot does not fix."""
    given = {
        name: _with_mount_type(props[name]) for name in _API_INPUTS if props.get(name) is not None
    }
    if _from_snapshot(props):
        given = {k: v for k, v in given.items() if k not in spec.SNAPSHOT_FIXES}
        given["template_name"] = _SNAPSHOT_TEMPLATE
    return given


def _from_snapshot(props: Mapping[str, Any]) -> bool:
    return props.get("snapshot_name") is not None


def _snapshot_name(value: Any) -> str | None:
    try:
        return spec.validate(spec.SnapshotRestoreRequest, {"snapshot_name": value}).snapshot_name
    except spec.SpecError:
        return None


def _inputs_of(request: spec.SandboxCreateRequest) -> dict[str, Any]:
    inputs = request.wire()
    inputs["network_policy"] = request.effective_network_policy().wire()
    inputs["mounts"] = [m.wire() for m in request.mounts]
    return inputs


def normal_inputs(props: Mapping[str, Any]) -> tuple[dict[str, Any], list[dynamic.CheckFailure]]:
    """Every known input normalized, unknown ones kept as they are, and what broke a rule."""
    inputs, failures = normal_form.normalize(
        _given(props), spec.validate_create, _inputs_of, _STAND_INS
    )
    failures += normal_form.own_input(
        props, "create_timeout", normal_form.seconds, "must be a positive number of seconds",
        inputs,
    )
    failures += normal_form.own_input(
        props, "adopt_id", normal_form.prefixed(spec.SANDBOX_ID_PREFIX),
        f"must be a sandbox id ({spec.SANDBOX_ID_PREFIX}...)", inputs,
    )
    if _from_snapshot(props):
        for name in spec.SNAPSHOT_FIXES:
            inputs.pop(name, None)
            if props.get(name) is not None:
                failures.append(dynamic.CheckFailure(
                    name, "is fixed by the snapshot named in snapshot_name: leave it out, the "
                    "restored sandbox has the snapshot's"))
        if props.get("adopt_id") is not None:
            failures.append(dynamic.CheckFailure(
                "adopt_id", "cannot be set with snapshot_name: a sandbox is either restored or "
                "adopted"))
        failures += normal_form.own_input(
            props, "snapshot_name", _snapshot_name,
            f"must be a snapshot name: 1-{spec.MAX_SNAPSHOT_NAME_CHARS} letters, digits, '.', "
            "'_' or '-', starting with a letter or digit", inputs,
        )
    return inputs, failures


def _request(props: Mapping[str, Any]) -> spec.SandboxCreateRequest:
    """The create request for props the engine already checked (so every value is known)."""
    try:
        return spec.validate_create(_given(props))
    except spec.SpecError as exc:
        # Messages never repeat values (spec's rule), so credentials cannot leak from here.
        raise ProviderError(f"invalid sandbox inputs: {exc}") from None


def _comparable(props: Mapping[str, Any]) -> dict[str, Any]:
    """What diff compares: normalized inputs, mounts without ids and credentials. A restored
    sandbox's outputs report what its snapshot fixed: those are not inputs."""
    if _from_snapshot(props):
        props = {k: v for k, v in props.items() if k not in spec.SNAPSHOT_FIXES}
    inputs, failures = normal_inputs(props)
    if failures:
        # Old outputs always validate; new inputs passed check. Compare what was written.
        inputs = {name: props.get(name) for name in _COMPARED}
    if not normal_form.is_unknown(props.get("mounts")):
        inputs["mounts"] = mounts.comparable(props.get("mounts"))
    return inputs


class SandboxProvider(Leap0Provider):
    """Leap0 sandboxes, reached with the stack's credentials. Pickled into state: keep it bare."""

    # State pickles the provider by reference, as module path and class name: every stack
    # holds "pulumi_leap0.provider.SandboxProvider", so that stays its name (and a new
    # pickle equals the old one, sparing every sandbox a provider-only update).
    __module__ = "pulumi_leap0.provider"

    # --- check and diff --------------------------------------------------------------------

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.CheckResult:
        return check_result(news, normal_inputs(news))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        compared = [n for n in _COMPARED
                    if not (_from_snapshot(news) and n in spec.SNAPSHOT_FIXES)]
        changed = normal_form.changed(_comparable(news), _comparable(olds), compared)
        return diff_result(news, olds, changed, REPLACES)

    # --- create ----------------------------------------------------------------------------

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        request = _request(props)
        if props.get("adopt_id"):
            return self._adopt(str(props["adopt_id"]), request, props)
        if _from_snapshot(props):
            return self._restore(str(props["snapshot_name"]), request, props)
        with self.client() as client:
            try:
                sandbox = client.create_sandbox(request)
            except Leap0Error as exc:
                raise _create_error(exc) from None
            with deleted_on_failure(sandbox.id, lambda: _delete(client, sandbox.id)):
                sandbox = _wait_running(client, sandbox, props)
        return dynamic.CreateResult(sandbox.id, _outputs(request, sandbox, props))

    def _adopt(
        self, sandbox_id: str, request: spec.SandboxCreateRequest, props: Mapping[str, Any]
    ) -> dynamic.CreateResult:
        """Take over an existing sandbox that matches the program; fix its mounts in place.

        What no call can change must already match, or adopting fails and says what
        differs. env_vars cannot be checked (the API never returns them): the program's
        are recorded. Nothing is deleted on failure: the sandbox was not ours.
        """
        with self.client() as client:
            sandbox = _adoptable(client, sandbox_id, request)
            current = [m.wire() for m in sandbox.mounts]
            applied = mounts.apply(client, sandbox_id, current, request.mounts, adopting=True)
            sandbox = client.get_sandbox(sandbox_id)
        return dynamic.CreateResult(sandbox_id,
                                    {**_outputs(request, sandbox, props), "mounts": applied})

    def _restore(
        self, snapshot_name: str, request: spec.SandboxCreateRequest, props: Mapping[str, Any]
    ) -> dynamic.CreateResult:
        """A new sandbox from the snapshot; then its mounts, as for an adopted one."""
        restore = spec.SnapshotRestoreRequest(
            snapshot_name=snapshot_name, timeout=request.timeout,
            auto_pause=request.auto_pause,
            # No policy is allow-all for every sandbox of a program, restored or not, so
            # that omitting it never means two things (the API would take the snapshot's).
            network_policy=request.effective_network_policy())
        with self.client() as client:
            try:
                sandbox = client.restore_snapshot(restore)
            except Leap0Error as exc:
                raise _restore_error(exc, snapshot_name) from None
            with deleted_on_failure(sandbox.id, lambda: _delete(client, sandbox.id)):
                sandbox = _wait_running(client, sandbox, props)
                applied = mounts.apply(client, sandbox.id, [], request.mounts)
                sandbox = client.get_sandbox(sandbox.id)
        outputs = _outputs(_restored(request, sandbox), sandbox, props)
        return dynamic.CreateResult(sandbox.id, {**outputs, "mounts": applied})

    # --- read ------------------------------------------------------------------------------

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        with self.client() as client:
            sandbox = found(lambda: client.get_sandbox(id_))
        if sandbox is None or sandbox.state in spec.GONE_STATES:
            return dynamic.ReadResult("", {})
        outputs = _refreshed(props, sandbox)
        inputs = {k: outputs[k] for k in (*_API_INPUTS, *PROVIDER_INPUTS) if k in outputs
                  and not (_from_snapshot(outputs) and k in spec.SNAPSHOT_FIXES)}
        return dynamic.ReadResult(id_, outputs, inputs)

    # --- update ----------------------------------------------------------------------------

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        request = _request(news)
        with self.client() as client:
            applied = mounts.apply(client, id_, olds.get("mounts") or [], request.mounts)
            sandbox = client.get_sandbox(id_)
        if _from_snapshot(news):
            request = _restored(request, sandbox)
        return dynamic.UpdateResult({**_outputs(request, sandbox, news), "mounts": applied})

    # --- delete ----------------------------------------------------------------------------

    def delete(self, id_: str, _props: dict[str, Any]) -> None:
        with self.client() as client:
            _delete(client, id_)


# --- Helpers for the calls above, in the same order ------------------------------------------


def _create_error(exc: Leap0Error) -> ProviderError:
    return create_error(
        exc,
        "sandbox",
        refused=(
            f"An organization may hold at most {spec.MAX_SANDBOXES_PER_ORG} sandboxes (every "
            "state but deleted counts): delete one you no longer need, or use an API key of "
            "another organization."
        ),
        listing="GET /v1/sandboxes",
    )


def _restore_error(exc: Leap0Error, snapshot_name: str) -> ProviderError:
    if exc.not_found:
        return ProviderError(f"Leap0 has no snapshot named {snapshot_name!r} in this "
                             "organization: create it first (leap0.Snapshot), or list them "
                             "with GET /v1/snapshots")
    if exc.status == 429:
        return ProviderError(
            f"Leap0 refused the restore: {exc.message}. An organization may hold at most "
            f"{spec.MAX_SANDBOXES_PER_ORG} sandboxes (every state but deleted counts): delete "
            "one you no longer need, or use an API key of another organization.")
    return create_error(exc, "sandbox", refused="", listing="GET /v1/sandboxes")


def _restored(
    request: spec.SandboxCreateRequest, sandbox: spec.Sandbox
) -> spec.SandboxCreateRequest:
    """The request as the restored sandbox has it: what its snapshot fixed, from the API."""
    return request.model_copy(update={"template_name": sandbox.template_id,
                                      "vcpu": sandbox.vcpu, "memory": sandbox.memory})


def _wait_running(
    client: Leap0Client, sandbox: spec.Sandbox, props: Mapping[str, Any]
) -> spec.Sandbox:
    return wait_until(
        sandbox,
        lambda: client.get_sandbox(sandbox.id),
        want={spec.SandboxState.RUNNING},
        passing=_STARTING,
        timeout_s=float(props.get("create_timeout") or CREATE_TIMEOUT_DEFAULT_S),
        what=f"sandbox {sandbox.id} to be running",
        hint="raise create_timeout if this template needs longer",
    )


def _adoptable(
    client: Leap0Client, sandbox_id: str, request: spec.SandboxCreateRequest
) -> spec.Sandbox:
    sandbox = found(lambda: client.get_sandbox(sandbox_id))
    if sandbox is None:
        raise ProviderError(f"cannot adopt {sandbox_id}: no such sandbox in this organization")
    if sandbox.state in spec.GONE_STATES:
        raise ProviderError(f"cannot adopt {sandbox_id}: it is {sandbox.state.value}")
    differing = _immutable_differences(request, sandbox)
    if differing:
        raise ProviderError(
            f"cannot adopt {sandbox_id}: its {', '.join(differing)} differ from the "
            "program and cannot change in place; make the program match, or remove "
            "adopt_id to create a new sandbox"
        )
    return sandbox


def _immutable_differences(
    request: spec.SandboxCreateRequest, sandbox: spec.Sandbox
) -> list[str]:
    differing = [
        name
        for name in ("vcpu", "memory", "timeout", "auto_pause")
        if getattr(request, name) != getattr(sandbox, name)
    ]
    if request.template_name != sandbox.template_id:
        differing.insert(0, "template_name")
    # Responses blank injected header values (and may leave the policy out): compare the rest.
    if sandbox.network_policy is not None and _blank_headers(
        request.effective_network_policy()
    ) != _blank_headers(sandbox.network_policy):
        differing.append("network_policy")
    return differing


def _blank_headers(policy: spec.NetworkPolicy) -> dict[str, Any]:
    wire = policy.wire()
    for transform in wire.get("transforms", []):
        transform["inject_headers"] = dict.fromkeys(transform.get("inject_headers", {}), "")
    return wire


def _outputs(
    request: spec.SandboxCreateRequest, sandbox: spec.Sandbox, props: Mapping[str, Any]
) -> dict[str, Any]:
    outputs = _inputs_of(request)
    outputs["mounts"] = mounts.outputs(request.mounts, sandbox)
    outputs.update(_computed(sandbox))
    for name in PROVIDER_INPUTS:
        if props.get(name) is not None:
            outputs[name] = props[name]
    if "create_timeout" in outputs:
        outputs["create_timeout"] = float(outputs["create_timeout"])
    return outputs


def _computed(sandbox: spec.Sandbox) -> dict[str, Any]:
    return {
        "state": sandbox.state.value,
        "template_id": sandbox.template_id,
        "disk": sandbox.disk,
        "created_at": sandbox.created_at,
    }


def _refreshed(olds: Mapping[str, Any], sandbox: spec.Sandbox) -> dict[str, Any]:
    """Old outputs brought up to date with what the API reports.

    What the API never returns (env_vars, mount endpoints and credentials, header values of
    transforms) stays as the last update left it. A paused or stopped sandbox is the same
    sandbox: its state is reported, not treated as drift. ``Sandbox.get`` reads with no old
    outputs (or only empty ones): everything then comes from the API.
    """
    outputs = {k: v for k, v in olds.items() if k != "__provider" and v is not None}
    outputs.update(
        vcpu=sandbox.vcpu,
        memory=sandbox.memory,
        timeout=sandbox.timeout,
        auto_pause=sandbox.auto_pause,
        template_name=outputs.get("template_name") or sandbox.template_id,
        **_computed(sandbox),
    )
    if "network_policy" not in outputs:
        policy = sandbox.network_policy or spec.NetworkPolicy(mode="allow-all")
        outputs["network_policy"] = policy.wire()
    outputs["mounts"] = mounts.refreshed(olds.get("mounts"), sandbox.mounts)
    return outputs


def _delete(client: Leap0Client, sandbox_id: str) -> None:
    delete_and_wait(
        lambda: client.delete_sandbox(sandbox_id),
        lambda: client.get_sandbox(sandbox_id).state == spec.SandboxState.DELETED,
        what=f"sandbox {sandbox_id}",
    )
