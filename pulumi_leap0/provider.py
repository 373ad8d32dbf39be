"""The dynamic provider: Pulumi's check, diff, create, read, update and delete for a sandbox.

Laid out as Terraform lays out a provider: the inputs and their normal form first, then
check and diff, then create, read, update and delete, in that order.

Facts about the engine that shape this module (see docs/architecture.md):

* The provider object is pickled into every sandbox's state, so it holds nothing but plain
  configuration: no client, no socket, no credential. A client is built inside each call.
* diff, update, read and delete receive the old *outputs*, not the old inputs, so the
  outputs carry every input that diff compares, in normal form.
* Numbers cross the engine as floats (``vcpu`` 2 arrives as 2.0) and values may be unknown
  during preview: every comparison goes through ``spec``'s normalization.
* The dynamic provider does not accept secrets: the engine strips them before each call and
  marks an output secret when the input of the same name held one (recursing into objects,
  but a list with one secret item becomes secret as a whole). So outputs may only carry a
  credential under a name whose input was secret, and mount credentials are not carried at
  all: a mount's output holds ``credentials_sha256``, a fingerprint of its key pair, which is
  enough for diff and update to see a change of credentials.
* Replacing a sandbox deletes the old one first (``delete_before_replace``): an organization
  holds at most three sandboxes, and create-before-delete would be refused with 409 exactly
  when a team is using all three.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    ConfigureRequest,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)
from pulumi.output import Unknown
from pulumi.runtime import rpc

from pulumi_leap0 import spec
from pulumi_leap0.client import API_KEY_ENV, BASE_URL_ENV, Leap0Client, Leap0Error

CREATE_TIMEOUT_DEFAULT_S = 300.0
DELETE_TIMEOUT_S = 300.0
FIRST_POLL_S, MAX_POLL_S = 0.02, 1.0

#: Inputs of our own, not of the API. ``create_timeout``: how long create waits for the
#: sandbox to run. ``adopt_id``: an existing sandbox that create takes over instead of
#: making a new one (``pulumi import`` does not work for dynamic providers).
PROVIDER_INPUTS = ("create_timeout", "adopt_id")
#: What the API reports about a sandbox; never inputs, never a reason to update.
COMPUTED_OUTPUTS = ("state", "template_id", "disk", "created_at")
#: In each mount's outputs, in place of its credentials.
FINGERPRINT = "credentials_sha256"

_API_INPUTS = tuple(spec.SandboxCreateRequest.model_fields)
# adopt_id only matters when the sandbox is created: it is compared by nobody.
_COMPARED = (*_API_INPUTS, "create_timeout")
_CREDENTIALS = ("access_key_id", "secret_access_key")
_STARTING = {spec.SandboxState.STARTING, spec.SandboxState.RUNNING}


class SandboxError(Exception):
    """A failure worth reading in `pulumi up` output: what went wrong and what to do."""


# --- Inputs in normal form -------------------------------------------------------------------


def _is_unknown_leaf(value: Any) -> bool:
    # Check and Diff see unknowns as ``Unknown`` objects; the sentinel string is what they
    # look like before deserialization.
    return isinstance(value, Unknown) or (isinstance(value, str) and value == rpc.UNKNOWN)


def _is_unknown(value: Any) -> bool:
    """Whether ``value`` is unknown or holds an unknown anywhere inside."""
    return bool(_unknown_paths(value, "-"))


def _unknown_paths(value: Any, path: str) -> list[str]:
    """API field paths (``mounts[0].bucket``) of every unknown inside ``value``."""
    if _is_unknown_leaf(value):
        return [path]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _unknown_paths(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in _unknown_paths(v, f"{path}[{i}]")]
    return []


class _StandIn:
    """An unknown during validation: no type accepts it."""


_STAND_IN = _StandIn()


def _unknowns_as_objects(value: Any) -> Any:
    # The sentinel is a string and would pass as one; an Unknown object fails every type,
    # so its error lands exactly on its own path, where check drops it.
    if _is_unknown_leaf(value):
        return _STAND_IN
    if isinstance(value, Mapping):
        return {k: _unknowns_as_objects(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_unknowns_as_objects(v) for v in value]
    return value


def _under(field: str, path: str) -> bool:
    return field == path or field.startswith((f"{path}.", f"{path}["))


def _with_mount_type(value: Any) -> Any:
    # Users write MountArgs(bucket=..., ...) without a type; the API requires "object-storage".
    if isinstance(value, list):
        return [
            {"type": spec.MOUNT_TYPE, **m} if isinstance(m, Mapping) and "type" not in m else m
            for m in value
        ]
    return value


def _given(props: Mapping[str, Any]) -> dict[str, Any]:
    """The API inputs that were set (None is "not set", as the engine sends it)."""
    return {
        name: _with_mount_type(props[name]) for name in _API_INPUTS if props.get(name) is not None
    }


def normal_inputs(props: Mapping[str, Any]) -> tuple[dict[str, Any], list[CheckFailure]]:
    """Every known input normalized, unknown ones kept as they are, and what broke a rule.

    One validation of the whole request by ``spec`` finds every failure. During preview an
    input may be unknown; a failure located at or under an unknown value is dropped (the
    real value may well be fine), while failures elsewhere, even beside an unknown in the
    same list, are still reported.
    """
    given = _given(props)
    unknown = {name: _unknown_paths(value, name) for name, value in given.items()}
    unknown = {name: paths for name, paths in unknown.items() if paths}
    failures: list[CheckFailure] = []
    inputs: dict[str, Any] = {}
    try:
        request = spec.validate_create(_unknowns_as_objects(given) if unknown else given)
    except spec.SpecError as exc:
        paths = [p for ps in unknown.values() for p in ps]
        failures = [
            CheckFailure(e.field, e.error)
            for e in exc.errors
            if not any(_under(e.field, p) for p in paths)
        ]
        if not failures and unknown:
            inputs = _known_inputs(given, unknown)
    else:
        inputs = _inputs_of(request)
    inputs.update({name: given[name] for name in unknown})
    failures.extend(_provider_input_failures(props, inputs))
    return inputs, failures


def _known_inputs(given: dict[str, Any], unknown: Mapping[str, Any]) -> dict[str, Any]:
    """Only unknowns failed: normalize what is known."""
    known = {k: v for k, v in given.items() if k not in unknown}
    # template_name is the one required field: an unknown one is stood in for.
    known.setdefault("template_name", "unknown")
    try:
        return _inputs_of(spec.validate_create(known))
    except spec.SpecError:
        # A rule across fields that only the unknown value would settle: keep it as written.
        return dict(given)


def _inputs_of(request: spec.SandboxCreateRequest) -> dict[str, Any]:
    inputs = request.wire()
    inputs["network_policy"] = request.effective_network_policy().wire()
    inputs["mounts"] = [m.wire() for m in request.mounts]
    return inputs


def _provider_input_failures(
    props: Mapping[str, Any], inputs: dict[str, Any]
) -> list[CheckFailure]:
    """Validate our own inputs into ``inputs``; return what broke."""
    failures = []
    timeout = props.get("create_timeout")
    if timeout is not None:
        if _is_unknown(timeout):
            inputs["create_timeout"] = timeout
        elif isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            failures.append(CheckFailure("create_timeout", "must be a positive number of seconds"))
        else:
            inputs["create_timeout"] = float(timeout)
    adopt_id = props.get("adopt_id")
    if adopt_id is not None:
        if _is_unknown(adopt_id):
            inputs["adopt_id"] = adopt_id
        elif not isinstance(adopt_id, str) or not adopt_id.startswith(spec.SANDBOX_ID_PREFIX):
            failures.append(
                CheckFailure("adopt_id", f"must be a sandbox id ({spec.SANDBOX_ID_PREFIX}...)")
            )
        else:
            inputs["adopt_id"] = adopt_id
    return failures


def _request(props: Mapping[str, Any]) -> spec.SandboxCreateRequest:
    """The create request for props the engine already checked (so every value is known)."""
    try:
        return spec.validate_create(_given(props))
    except spec.SpecError as exc:
        # Messages never repeat values (spec's rule), so credentials cannot leak from here.
        raise SandboxError(f"invalid sandbox inputs: {exc}") from None


# --- Mounts as outputs hold them -------------------------------------------------------------


def credentials_fingerprint(mount: Mapping[str, Any]) -> str | None:
    """sha256 over a mount's key pair: lets diff see a new credential without keeping it.

    The fingerprint sits in the ``mounts`` output, which the engine marks secret whenever
    the mounts input held credentials, so even the hash is encrypted in state.
    """
    key, secret = mount.get("access_key_id"), mount.get("secret_access_key")
    if not key and not secret:
        return None
    material = "\0".join(("leap0-mount-credentials", str(key or ""), str(secret or "")))
    return hashlib.sha256(material.encode()).hexdigest()


def mount_state(mount: Mapping[str, Any]) -> dict[str, Any]:
    """One mount as outputs hold it: normalized, credentials replaced by their fingerprint.

    Accepts inputs (with credentials) and old outputs (with a fingerprint, or, if written
    by an older provider, with credentials). A mount that no longer validates, such as one
    added out of band and seen by refresh without its endpoint, is kept as it is.
    """
    fingerprint = credentials_fingerprint(mount) or mount.get(FINGERPRINT)
    try:
        fields = spec.validate(spec.MountRequest, {"type": spec.MOUNT_TYPE, **mount}).wire()
    except spec.SpecError:
        fields = {k: v for k, v in mount.items() if v is not None}
    state = {k: v for k, v in fields.items() if k not in (*_CREDENTIALS, FINGERPRINT, "id")}
    if fingerprint:
        state[FINGERPRINT] = fingerprint
    if mount.get("id"):
        state["id"] = mount["id"]
    return state


def mount_states(mounts: Any) -> list[dict[str, Any]]:
    """Every mount's state, in the canonical order (by mount_path)."""
    states = [mount_state(m) for m in mounts or [] if isinstance(m, Mapping)]
    return sorted(states, key=lambda m: str(m.get("mount_path")))


def _comparable(props: Mapping[str, Any]) -> dict[str, Any]:
    """What diff compares: normalized inputs, mounts without ids and credentials."""
    inputs, failures = normal_inputs(props)
    if failures:
        # Old outputs always validate; new inputs passed check. Compare what was written.
        inputs = {name: props.get(name) for name in _COMPARED}
    mounts = props.get("mounts")
    if not _is_unknown(mounts):
        inputs["mounts"] = [
            {k: v for k, v in m.items() if k != "id"} for m in mount_states(mounts)
        ]
    return inputs


# --- The provider ----------------------------------------------------------------------------


class SandboxProvider(ResourceProvider):
    """Leap0 sandboxes, reached with the stack's credentials. Pickled into state: keep it bare."""

    # Pulumi marks the pickled provider secret by default; it holds no secret, and a
    # readable provider in state is easier to debug.
    serialize_as_secret_always = False

    def __init__(self) -> None:
        self._api_key: str | None = None
        self._base_url: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # configure() may have run before pickling (program-side Sandbox.get); the key must
        # never travel into state with the provider.
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def configure(self, req: ConfigureRequest) -> None:
        self._api_key = req.config.get("leap0:apiKey") or None
        self._base_url = req.config.get("leap0:baseUrl") or None

    @contextmanager
    def _client(self) -> Iterator[Leap0Client]:
        api_key = self._api_key or os.environ.get(API_KEY_ENV)
        if not api_key:
            raise SandboxError(
                "no Leap0 API key: set it with `pulumi config set --secret leap0:apiKey <key>` "
                f"or in the {API_KEY_ENV} environment variable"
            )
        base_url = self._base_url or os.environ.get(BASE_URL_ENV)
        with Leap0Client(api_key, base_url) as client:
            yield client

    # --- check and diff --------------------------------------------------------------------

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs, failures = normal_inputs(news)
        if failures:
            # Hand back what the user wrote, so the engine reports failures against it.
            return CheckResult(news, failures)
        return CheckResult(inputs, [])

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        new, old = _comparable(news), _comparable(olds)
        changed = [
            name
            for name in _COMPARED
            if _is_unknown(new.get(name)) or new.get(name) != old.get(name)
        ]
        replaces = [name for name in changed if name in spec.REPLACE_ON_CHANGE]
        # A new version of this provider alone is an update that keeps every output.
        provider_changed = news.get("__provider") != olds.get("__provider")
        return DiffResult(
            changes=bool(changed) or provider_changed,
            replaces=replaces,
            delete_before_replace=True,
        )

    # --- create ----------------------------------------------------------------------------

    def create(self, props: dict[str, Any]) -> CreateResult:
        request = _request(props)
        if props.get("adopt_id"):
            return self._adopt(str(props["adopt_id"]), request, props)
        wait_s = float(props.get("create_timeout") or CREATE_TIMEOUT_DEFAULT_S)
        with self._client() as client:
            try:
                sandbox = client.create_sandbox(request)
            except Leap0Error as exc:
                raise _create_error(exc) from None
            try:
                sandbox = _wait_until(
                    sandbox,
                    lambda: client.get_sandbox(sandbox.id),
                    lambda s: s.state == spec.SandboxState.RUNNING,
                    wait_s,
                    f"sandbox {sandbox.id} to be running",
                    fail_when=lambda s: s.state not in _STARTING,
                )
            except BaseException as failure:
                # Nothing half-created stays behind: the sandbox is ours until create returns.
                _cleanup(client, sandbox.id, failure)
                raise
        return CreateResult(sandbox.id, _outputs(request, sandbox, props))

    def _adopt(
        self, sandbox_id: str, request: spec.SandboxCreateRequest, props: Mapping[str, Any]
    ) -> CreateResult:
        """Take over an existing sandbox that matches the program; fix its mounts in place.

        What no call can change must already match, or adopting fails and says what
        differs. env_vars cannot be checked (the API never returns them): the program's
        are recorded. Nothing is deleted on failure: the sandbox was not ours.
        """
        with self._client() as client:
            try:
                sandbox = client.get_sandbox(sandbox_id)
            except Leap0Error as exc:
                if exc.not_found:
                    raise SandboxError(
                        f"cannot adopt {sandbox_id}: no such sandbox in this organization"
                    ) from None
                raise
            if sandbox.state in spec.GONE_STATES:
                raise SandboxError(f"cannot adopt {sandbox_id}: it is {sandbox.state.value}")
            differing = _immutable_differences(request, sandbox)
            if differing:
                raise SandboxError(
                    f"cannot adopt {sandbox_id}: its {', '.join(differing)} differ from the "
                    "program and cannot change in place; make the program match, or remove "
                    "adopt_id to create a new sandbox"
                )
            current = [m.wire() for m in sandbox.mounts]
            mounts = _apply_mounts(client, sandbox_id, current, request.mounts, adopting=True)
            sandbox = client.get_sandbox(sandbox_id)
        outputs = _outputs(request, sandbox, props)
        outputs["mounts"] = mounts
        return CreateResult(sandbox_id, outputs)

    # --- read ------------------------------------------------------------------------------

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self._client() as client:
            try:
                sandbox = client.get_sandbox(id_)
            except Leap0Error as exc:
                if exc.not_found:
                    return ReadResult("", {})
                raise
        if sandbox.state in spec.GONE_STATES:
            return ReadResult("", {})
        outputs = _refreshed(props, sandbox)
        inputs = {k: outputs[k] for k in (*_API_INPUTS, *PROVIDER_INPUTS) if k in outputs}
        return ReadResult(id_, outputs, inputs)

    # --- update ----------------------------------------------------------------------------

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        request = _request(news)
        with self._client() as client:
            mounts = _apply_mounts(client, id_, olds.get("mounts") or [], request.mounts)
            sandbox = client.get_sandbox(id_)
        outputs = _outputs(request, sandbox, news)
        outputs["mounts"] = mounts
        return UpdateResult(outputs)

    # --- delete ----------------------------------------------------------------------------

    def delete(self, id_: str, _props: dict[str, Any]) -> None:
        with self._client() as client:
            _delete_and_wait(client, id_, DELETE_TIMEOUT_S)


# --- Helpers for the calls above -------------------------------------------------------------


def _create_error(exc: Leap0Error) -> Exception:
    if exc.conflict:
        return SandboxError(
            f"Leap0 refused the sandbox: {exc.message}. An organization may hold at most "
            f"{spec.MAX_SANDBOXES_PER_ORG} sandboxes (every state but deleted counts): delete "
            "one you no longer need, or use an API key of another organization."
        )
    if exc.errors:
        return SandboxError(
            "Leap0 rejected the sandbox: " + "; ".join(f"{e.field}: {e.error}" for e in exc.errors)
        )
    if exc.status == 0:
        # The POST may have reached the server; it is never retried (it could make two).
        return SandboxError(
            f"Leap0 could not be reached to create the sandbox ({exc.message}); if the request "
            "got through, a sandbox may exist: list them with GET /v1/sandboxes"
        )
    return SandboxError(f"Leap0 could not create the sandbox: {exc}")


def _cleanup(client: Leap0Client, sandbox_id: str, failure: BaseException) -> None:
    """Delete what create made; a failure to do so is added to the original error."""
    try:
        _delete_and_wait(client, sandbox_id, DELETE_TIMEOUT_S)
    except Exception as exc:  # the original failure is the one to report
        failure.add_note(f"and {sandbox_id} could not be deleted afterwards ({exc}); delete it")


def _wait_until(
    current: spec.Sandbox,
    fetch: Callable[[], spec.Sandbox],
    done: Callable[[spec.Sandbox], bool],
    timeout_s: float,
    what: str,
    *,
    fail_when: Callable[[spec.Sandbox], bool] = lambda _s: False,
) -> spec.Sandbox:
    """Poll with short, growing intervals: most sandboxes run within tens of milliseconds."""
    deadline = time.monotonic() + timeout_s
    interval = FIRST_POLL_S
    while True:
        if done(current):
            return current
        if fail_when(current):
            raise SandboxError(f"gave up waiting for {what}: it is {current.state.value}")
        if time.monotonic() + interval > deadline:
            raise SandboxError(
                f"gave up waiting for {what} after {timeout_s:g} s (it is {current.state.value}); "
                "raise create_timeout if this template needs longer"
            )
        time.sleep(interval)
        interval = min(interval * 2, MAX_POLL_S)
        current = fetch()


def _delete_and_wait(client: Leap0Client, sandbox_id: str, timeout_s: float) -> None:
    """Delete, waiting through transitions (409); a sandbox already gone is success."""
    deadline = time.monotonic() + timeout_s
    interval = FIRST_POLL_S
    while True:
        try:
            client.delete_sandbox(sandbox_id)
            if client.get_sandbox(sandbox_id).state == spec.SandboxState.DELETED:
                return
        except Leap0Error as exc:
            if exc.not_found:
                return
            if not exc.conflict:
                raise
        if time.monotonic() + interval > deadline:
            raise SandboxError(f"sandbox {sandbox_id} was not gone after {timeout_s:g} s")
        time.sleep(interval)
        interval = min(interval * 2, MAX_POLL_S)


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
    ids = {m.mount_path: m.id for m in sandbox.mounts}
    outputs = _inputs_of(request)
    outputs["mounts"] = [
        {**mount_state(m.wire()), "id": ids.get(m.mount_path, "")} for m in request.mounts
    ]
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

    The API never returns env_vars, mount endpoints or credentials, nor header values of
    transforms; those stay as the last update left them. A paused or stopped sandbox is
    the same sandbox: its state is reported, not treated as drift. ``Sandbox.get`` reads
    with no old outputs (or only empty ones): everything then comes from the API.
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
    known = {m["id"]: m for m in mount_states(olds.get("mounts")) if m.get("id")}
    outputs["mounts"] = mount_states(
        {**known.get(m.id, {}), **m.wire()} for m in sandbox.mounts
    )
    return outputs


def _apply_mounts(
    client: Leap0Client,
    sandbox_id: str,
    old_mounts: Any,
    new_mounts: list[spec.MountRequest],
    *,
    adopting: bool = False,
) -> list[dict[str, Any]]:
    """Make the sandbox's mounts match: remove, then change in place (ids kept), then add.

    When adopting, nothing about the existing mounts' endpoints or credentials is known
    (the API never returns them), so every kept mount is sent its full wanted state.
    """
    old = {m["mount_path"]: m for m in mount_states(old_mounts)}
    new = {m.mount_path: m for m in new_mounts}
    for path in old.keys() - new.keys():
        if not old[path].get("id"):
            continue
        try:
            client.delete_mount(sandbox_id, old[path]["id"])
        except Leap0Error as exc:
            if not exc.not_found:
                raise
    result: dict[str, dict[str, Any]] = {}
    for path, mount in new.items():
        wanted = mount_state(mount.wire())
        current = old.get(path, {})
        if current.get("id"):
            mount_id = current["id"]
            changes = {
                k: v
                for k, v in mount.wire().items()
                if k not in ("type", *_CREDENTIALS) and (adopting or current.get(k) != v)
            }
            if adopting or current.get(FINGERPRINT) != wanted.get(FINGERPRINT):
                # The API clears a credential with "".
                changes.update({k: getattr(mount, k) or "" for k in _CREDENTIALS})
            if changes:
                client.update_mount(
                    sandbox_id, mount_id, spec.validate(spec.MountUpdateRequest, changes)
                )
            result[path] = {**wanted, "id": mount_id}
        else:
            added = client.add_mount(sandbox_id, mount)
            result[path] = {**wanted, "id": added.id}
    return [result[path] for path in sorted(result)]
