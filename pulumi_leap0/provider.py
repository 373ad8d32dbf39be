"""The dynamic provider: Pulumi's check, diff, create, read, update and delete for a sandbox.

Laid out as Terraform lays out a provider: the inputs and their normal form first, then
check and diff, then create, read, update and delete, in that order.

Facts about the engine that shape this module (see docs/architecture.md):

* The provider object is pickled into every sandbox's state, so it holds nothing but plain
  configuration: no client, no socket, no credential. A client is built inside each call.
* diff, update, read and delete receive the old *outputs*, not the old inputs, so the
  outputs carry every input that diff compares, in normal form.
* Numbers cross the engine as floats (``vcpu`` 2 arrives as 2.0) and values may be unknown
  during preview: every comparison goes through ``spec``'s normalization, field by field.
* Replacing a sandbox deletes the old one first (``delete_before_replace``): an organization
  holds at most three sandboxes, and create-before-delete would be refused with 409 exactly
  when a team is using all three.
"""

from __future__ import annotations

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

#: Inputs of our own, not of the API: how long create waits for the sandbox to run.
PROVIDER_INPUTS = ("create_timeout",)
#: What the API reports about a sandbox; never inputs, never a reason to update.
COMPUTED_OUTPUTS = ("state", "template_id", "disk", "created_at")

_GONE = {spec.SandboxState.DELETED, spec.SandboxState.DELETING}
_API_INPUTS = tuple(spec.SandboxCreateRequest.model_fields)


class SandboxError(Exception):
    """A failure worth reading in `pulumi up` output: what went wrong and what to do."""


# --- Inputs in normal form -------------------------------------------------------------------


def _is_unknown(value: Any) -> bool:
    # The engine's Check and Diff keep unknowns as ``Unknown`` objects; other calls would
    # see the sentinel string.
    if isinstance(value, Unknown) or value == rpc.UNKNOWN:
        return True
    if isinstance(value, Mapping):
        return any(_is_unknown(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_is_unknown(v) for v in value)
    return False


def _with_mount_type(value: Any) -> Any:
    # Users write MountArgs(bucket=..., ...) without a type; the API requires "object-storage".
    if isinstance(value, list):
        return [
            {"type": spec.MOUNT_TYPE, **m} if isinstance(m, Mapping) and "type" not in m else m
            for m in value
        ]
    return value


def normal_field(name: str, value: Any) -> Any:
    """One input in the form the API would store it; raises ``spec.SpecError``."""
    data = {"template_name": "t", name: _with_mount_type(value)}
    request = spec.validate_create({k: v for k, v in data.items() if v is not None})
    if name == "network_policy":
        return request.effective_network_policy().wire()
    if name == "mounts":
        return [m.wire() for m in request.mounts]
    return request.wire()[name]


def normal_inputs(props: Mapping[str, Any]) -> tuple[dict[str, Any], list[CheckFailure]]:
    """Every known input normalized, unknown ones kept as they are, and what broke a rule."""
    inputs: dict[str, Any] = {}
    failures: list[CheckFailure] = []
    for name in _API_INPUTS:
        value = props.get(name)
        if _is_unknown(value):
            inputs[name] = value
            continue
        try:
            inputs[name] = normal_field(name, value)
        except spec.SpecError as exc:
            failures.extend(CheckFailure(e.field, e.error) for e in exc.errors)
    timeout = props.get("create_timeout")
    if timeout is not None and not _is_unknown(timeout):
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            failures.append(CheckFailure("create_timeout", "must be a positive number of seconds"))
        else:
            inputs["create_timeout"] = float(timeout)
    return inputs, failures


def _request(props: Mapping[str, Any]) -> spec.SandboxCreateRequest:
    inputs, failures = normal_inputs(props)
    if failures:
        raise SandboxError("; ".join(f"{f.property}: {f.reason}" for f in failures))
    return spec.validate_create({k: inputs[k] for k in _API_INPUTS})


def _mounts_by_path(mounts: Any) -> dict[str, dict[str, Any]]:
    return {m["mount_path"]: dict(m) for m in mounts or []}


def _mount_fields(mount: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mount.items() if k != "id"}


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
        new_inputs, _ = normal_inputs(news)
        old_inputs, _ = normal_inputs(olds)
        changed = [
            name
            for name in (*_API_INPUTS, *PROVIDER_INPUTS)
            if _is_unknown(new_inputs.get(name)) or new_inputs.get(name) != old_inputs.get(name)
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
            except BaseException:
                # Nothing half-created stays behind: the sandbox is ours until create returns.
                _delete_and_wait(client, sandbox.id, DELETE_TIMEOUT_S)
                raise
        return CreateResult(sandbox.id, _outputs(request, sandbox, props))

    # --- read ------------------------------------------------------------------------------

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self._client() as client:
            try:
                sandbox = client.get_sandbox(id_)
            except Leap0Error as exc:
                if exc.not_found:
                    return ReadResult("", {})
                raise
        if sandbox.state in _GONE:
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

_STARTING = {spec.SandboxState.STARTING, spec.SandboxState.RUNNING}


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
    return SandboxError(f"Leap0 could not create the sandbox: {exc}")


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
            state = client.get_sandbox(sandbox_id).state
            if state == spec.SandboxState.DELETED:
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


def _outputs(
    request: spec.SandboxCreateRequest, sandbox: spec.Sandbox, props: Mapping[str, Any]
) -> dict[str, Any]:
    ids = {m.mount_path: m.id for m in sandbox.mounts}
    outputs = request.wire()
    outputs["network_policy"] = request.effective_network_policy().wire()
    outputs["mounts"] = [{**m.wire(), "id": ids.get(m.mount_path, "")} for m in request.mounts]
    outputs.update(_computed(sandbox))
    if props.get("create_timeout") is not None:
        outputs["create_timeout"] = float(props["create_timeout"])
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
    the same sandbox: its state is reported, not treated as drift.
    """
    outputs = {k: v for k, v in olds.items() if k != "__provider"}
    outputs.update(
        vcpu=sandbox.vcpu,
        memory=sandbox.memory,
        timeout=sandbox.timeout,
        auto_pause=sandbox.auto_pause,
        template_name=olds.get("template_name", sandbox.template_id),
        **_computed(sandbox),
    )
    if "network_policy" not in outputs:  # Sandbox.get: no old outputs to keep
        policy = sandbox.network_policy or spec.NetworkPolicy(mode="allow-all")
        outputs["network_policy"] = policy.wire()
    known = {m["id"]: m for m in olds.get("mounts") or [] if m.get("id")}
    outputs["mounts"] = [
        {**known.get(m.id, {}), **m.wire()}
        for m in sorted(sandbox.mounts, key=lambda m: m.mount_path)
    ]
    return outputs


def _apply_mounts(
    client: Leap0Client,
    sandbox_id: str,
    old_mounts: list[Mapping[str, Any]],
    new_mounts: list[spec.MountRequest],
) -> list[dict[str, Any]]:
    """Make the sandbox's mounts match: remove, then change in place (ids kept), then add."""
    old = _mounts_by_path(old_mounts)
    new = {m.mount_path: m for m in new_mounts}
    for path in old.keys() - new.keys():
        try:
            client.delete_mount(sandbox_id, old[path]["id"])
        except Leap0Error as exc:
            if not exc.not_found:
                raise
    result: dict[str, dict[str, Any]] = {}
    for path, mount in new.items():
        wanted = mount.wire()
        if path in old and old[path].get("id"):
            mount_id = old[path]["id"]
            current = _mount_fields(old[path])
            if current != wanted:
                changes = {k: v for k, v in wanted.items() if current.get(k) != v and k != "type"}
                for secret in ("access_key_id", "secret_access_key"):
                    if secret in current and secret not in wanted:
                        changes[secret] = ""  # the API clears a credential with ""
                client.update_mount(
                    sandbox_id, mount_id, spec.validate(spec.MountUpdateRequest, changes)
                )
            result[path] = {**wanted, "id": mount_id}
        else:
            added = client.add_mount(sandbox_id, mount)
            result[path] = {**wanted, "id": added.id}
    return [result[path] for path in sorted(result)]
