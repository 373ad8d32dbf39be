"""The resources, as Pulumi programs write them: ``leap0.Sandbox``, ``leap0.Template``,
``leap0.Snapshot`` and their argument types.

One section per resource (its argument classes, then the resource), after what they share.
Inputs are named as the API names them; the logic lives in ``provider/``.

Credentials (``spec.SECRET_PATHS``: env var values, mount keys, injected header values) are
marked secret here, by the resource itself, so that a user who passes a plain string still
never finds it in plaintext in state or in preview output. The dynamic provider does not
accept secrets: the engine strips them before calling it and marks an output secret when the
input of the same name held one, recursing into objects and taking a list with one secret
item as secret as a whole. So ``env_vars`` is secret, ``network_policy.transforms`` is
secret when a transform injects headers, and ``mounts`` is secret when a mount has
credentials. Mount outputs never hold the credentials themselves, only
``credentials_sha256``, a fingerprint that lets diff see them change.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi.dynamic

from pulumi_leap0 import spec
from pulumi_leap0.provider import snapshot as snapshot_provider
from pulumi_leap0.provider import template as template_provider
from pulumi_leap0.provider.sandbox import COMPUTED_OUTPUTS, SandboxProvider
from pulumi_leap0.provider.snapshot import SnapshotProvider
from pulumi_leap0.provider.template import TemplateProvider

SANDBOX_TYPE = "pulumi-python:dynamic/leap0:Sandbox"
TEMPLATE_TYPE = "pulumi-python:dynamic/leap0:Template"
SNAPSHOT_TYPE = "pulumi-python:dynamic/leap0:Snapshot"


# --- Shared by every resource ----------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Argument objects (or dicts) as the plain dicts the engine protocol carries, with
    every unset (None) field left out."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = vars(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _mark_secrets(props: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """Wrap the values at ``paths`` (in ``spec.SECRET_PATHS``' form) as secrets, in place.

    A path ending in ``{}`` (every value of a map) marks the map as a whole: the names of
    credentials are worth hiding too.
    """
    for path in paths:
        _mark(props, re.findall(r"\[\]|\{\}|[^.\[\]{}]+", path))
    return props


def _mark(container: Any, steps: Sequence[str]) -> None:
    name, rest = steps[0], steps[1:]
    if not isinstance(container, dict) or container.get(name) is None:
        return
    if not rest or list(rest) == ["{}"]:
        container[name] = pulumi.Output.secret(container[name])
    elif rest[0] == "[]":
        items = container[name]
        for item in items if isinstance(items, list) else []:
            _mark(item, rest[1:])
    else:
        _mark(container[name], rest)


# --- Sandbox ---------------------------------------------------------------------------------


@dataclass
class TransformArgs:
    """Rewrite requests to ``domain``: inject credentials, strip headers the sandbox sent."""

    domain: pulumi.Input[str]
    inject_headers: pulumi.Input[dict[str, pulumi.Input[str]]] | None = None
    strip_headers: pulumi.Input[list[pulumi.Input[str]]] | None = None


@dataclass
class NetworkPolicyArgs:
    """Egress: ``allow-all`` (the default), ``deny-all``, or ``custom`` with allow lists."""

    mode: pulumi.Input[str]
    allow_domains: pulumi.Input[list[pulumi.Input[str]]] | None = None
    allow_cidrs: pulumi.Input[list[pulumi.Input[str]]] | None = None
    transforms: list[TransformArgs] | None = None


@dataclass
class MountArgs:
    """A read-only S3-compatible bucket at ``mount_path``; credentials stay on the runner."""

    bucket: pulumi.Input[str]
    mount_path: pulumi.Input[str]
    endpoint: pulumi.Input[str]
    prefix: pulumi.Input[str] | None = None
    read_only: pulumi.Input[bool] | None = None
    access_key_id: pulumi.Input[str] | None = None
    secret_access_key: pulumi.Input[str] | None = None
    type: str = spec.MOUNT_TYPE


@dataclass
class SandboxArgs:
    #: Required, unless ``snapshot_name`` is set (the snapshot's template is used then).
    template_name: pulumi.Input[str] | None = None
    env_vars: pulumi.Input[dict[str, pulumi.Input[str]]] | None = None
    mounts: list[MountArgs] | None = None
    vcpu: pulumi.Input[int] | None = None
    memory: pulumi.Input[int] | None = None
    timeout: pulumi.Input[int] | None = None
    auto_pause: pulumi.Input[bool] | None = None
    network_policy: NetworkPolicyArgs | None = None
    #: Seconds create waits for the sandbox to run before it deletes it and fails.
    create_timeout: pulumi.Input[float] | None = None
    #: An existing sandbox (``sbx-...``) to take over instead of creating one. It must
    #: already match what cannot change in place; its mounts are made to match. Only
    #: read when the resource is created.
    adopt_id: pulumi.Input[str] | None = None
    #: A snapshot (``leap0.Snapshot``'s ``name``) to restore the sandbox from: its files,
    #: template, vcpu, memory and environment; those inputs must then be left out.
    #: Changing it replaces the sandbox.
    snapshot_name: pulumi.Input[str] | None = None


def _prepare(props: dict[str, Any]) -> dict[str, Any]:
    """Fill in what the API requires but users need not write, and mark credentials secret."""
    for mount in props.get("mounts") or []:
        if isinstance(mount, dict):
            mount.setdefault("type", spec.MOUNT_TYPE)
    return _mark_secrets(props, spec.SECRET_PATHS)


class Sandbox(pulumi.dynamic.Resource, module="leap0", name="Sandbox"):
    """A Leap0 sandbox, managed as infrastructure.

    * Changing ``template_name``, ``env_vars``, ``vcpu``, ``memory``, ``timeout``,
      ``auto_pause`` or ``network_policy`` replaces the sandbox, and preview names exactly
      those. The old sandbox is deleted *before* its replacement is created: an
      organization holds at most 3 sandboxes, and create-before-delete would be refused
      exactly when all three are in use. The sandbox is briefly absent during ``up``.
    * ``mounts`` change in place: added, changed (keeping their ids) and removed.
    * Create waits for the sandbox to run, polling from 20 ms up to 1 s, for at most
      ``create_timeout`` seconds (default 300); on any failure after the sandbox was made it
      is deleted before the error is raised.
    * ``pulumi import`` does not work for dynamic providers (pulumi/pulumi#16175): set
      ``adopt_id`` to take over an existing sandbox, or use :meth:`get` to only read one.
    * ``snapshot_name`` creates the sandbox by restoring that snapshot: its files, template,
      vcpu, memory and environment. Setting any of ``template_name``, ``vcpu``, ``memory``
      or ``env_vars`` beside it fails the check, naming each; their outputs report the
      snapshot's. Without ``network_policy`` it is allow-all, as for any sandbox.
    * Credentials: ``LEAP0_API_KEY`` / ``LEAP0_BASE_URL``, or stack config ``leap0:apiKey``
      (secret) and ``leap0:baseUrl``.
    """

    template_name: pulumi.Output[str]
    env_vars: pulumi.Output[dict[str, str]]
    mounts: pulumi.Output[list[dict[str, Any]]]
    vcpu: pulumi.Output[int]
    memory: pulumi.Output[int]
    timeout: pulumi.Output[int]
    auto_pause: pulumi.Output[bool]
    network_policy: pulumi.Output[dict[str, Any]]
    state: pulumi.Output[str]
    template_id: pulumi.Output[str]
    disk: pulumi.Output[int]
    created_at: pulumi.Output[str]
    create_timeout: pulumi.Output[float | None]
    adopt_id: pulumi.Output[str | None]
    snapshot_name: pulumi.Output[str | None]

    def __init__(
        self,
        resource_name: str,
        args: SandboxArgs | None = None,
        opts: pulumi.ResourceOptions | None = None,
        *,
        template_name: pulumi.Input[str] | None = None,
        env_vars: pulumi.Input[dict[str, pulumi.Input[str]]] | None = None,
        mounts: list[MountArgs] | list[dict[str, Any]] | None = None,
        vcpu: pulumi.Input[int] | None = None,
        memory: pulumi.Input[int] | None = None,
        timeout: pulumi.Input[int] | None = None,
        auto_pause: pulumi.Input[bool] | None = None,
        network_policy: NetworkPolicyArgs | dict[str, Any] | None = None,
        create_timeout: pulumi.Input[float] | None = None,
        adopt_id: pulumi.Input[str] | None = None,
        snapshot_name: pulumi.Input[str] | None = None,
    ) -> None:
        if args is not None:
            given = dict(vars(args))
        else:
            given = {
                "template_name": template_name, "env_vars": env_vars, "mounts": mounts,
                "vcpu": vcpu, "memory": memory, "timeout": timeout, "auto_pause": auto_pause,
                "network_policy": network_policy, "create_timeout": create_timeout,
                "adopt_id": adopt_id, "snapshot_name": snapshot_name,
            }
        if given.get("template_name") is None and given.get("snapshot_name") is None and (
                opts is None or opts.id is None):
            raise TypeError("Sandbox needs template_name (or snapshot_name)")
        props = _prepare(_plain(given))
        # Outputs only exist as attributes when the props name them.
        props = {**dict.fromkeys((*COMPUTED_OUTPUTS, *given)), **props}
        # env_vars is secret as a whole (names and values, spec.SECRET_PATHS), also when the
        # engine has no secret input to copy it from (Sandbox.get, refresh).
        secret_outputs = pulumi.ResourceOptions(additional_secret_outputs=["env_vars"])
        opts = pulumi.ResourceOptions.merge(opts, secret_outputs)
        super().__init__(SandboxProvider(), resource_name, props, opts)

    @staticmethod
    def get(
        resource_name: str, id: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None
    ) -> Sandbox:
        """Read an existing sandbox into the program without managing it."""
        return Sandbox(resource_name, opts=pulumi.ResourceOptions.merge(opts,
                       pulumi.ResourceOptions(id=id)))


# --- Template --------------------------------------------------------------------------------


@dataclass
class RegistryCredentialsArgs:
    """Credentials for a private registry. This backend pulls with ``basic`` ones; the
    others (``aws``, ``gcp``, ``azure``) are validated and refused by it."""

    type: pulumi.Input[str]
    username: pulumi.Input[str] | None = None
    password: pulumi.Input[str] | None = None
    aws_access_key_id: pulumi.Input[str] | None = None
    aws_secret_access_key: pulumi.Input[str] | None = None
    aws_region: pulumi.Input[str] | None = None
    gcp_service_account_json: pulumi.Input[str] | None = None
    azure_client_id: pulumi.Input[str] | None = None
    azure_client_secret: pulumi.Input[str] | None = None
    azure_tenant_id: pulumi.Input[str] | None = None


class Template(pulumi.dynamic.Resource, module="leap0", name="Template"):
    """A Leap0 template: a container image, pulled and converted to a root file system, that
    sandboxes are created from (``Sandbox(template_name=tpl.name)``, which also orders
    ``up`` and ``destroy`` correctly).

    * A new ``name`` renames the template in place; a new ``uri`` replaces it (the old one
      deleted first: names are unique and an organization holds at most 25 templates).
    * ``credentials`` are secret (marked here, whatever the program passes) and serve the
      upload only: Leap0 never stores or returns them, so changing them alone changes
      nothing; state keeps a fingerprint (``credentials_sha256``), never the values.
    * Delete waits up to 30 s for sandboxes that still use the template to go (one restored
      from a snapshot uses it without depending on it), then fails naming them.
    * Refresh: the API has no call that reads or lists templates, so refresh cannot see a
      template renamed or deleted outside Pulumi; it keeps the outputs the last ``up``
      recorded (``digest``, ``image_config``, ``created_at``). A template deleted outside
      Pulumi is found at the next rename (404) and is simply gone at destroy.
    """

    name: pulumi.Output[str]
    uri: pulumi.Output[str]
    digest: pulumi.Output[str]
    image_config: pulumi.Output[dict[str, Any]]
    is_system: pulumi.Output[bool]
    created_at: pulumi.Output[str]
    credentials_sha256: pulumi.Output[str | None]

    def __init__(
        self,
        resource_name: str,
        opts: pulumi.ResourceOptions | None = None,
        *,
        name: pulumi.Input[str],
        uri: pulumi.Input[str],
        credentials: RegistryCredentialsArgs | dict[str, Any] | None = None,
    ) -> None:
        given = {"name": name, "uri": uri, "credentials": credentials}
        props = _mark_secrets(_plain(given), spec.TEMPLATE_SECRET_PATHS)
        props = {**dict.fromkeys(template_provider.COMPUTED_OUTPUTS), **props}
        super().__init__(TemplateProvider(), resource_name, props, opts)


# --- Snapshot --------------------------------------------------------------------------------


class Snapshot(pulumi.dynamic.Resource, module="leap0", name="Snapshot"):
    """A snapshot of a Leap0 sandbox: its writable files (home, /tmp, /var/tmp) and its
    configuration, from which ``leap0.Sandbox(snapshot_name=...)`` restores new sandboxes.

    * Any change of ``sandbox_id``, ``name`` or ``kill_sandbox_after`` replaces it (the old
      one is deleted first: names are unique in an organization).
    * Without ``name`` one is chosen once (``snapshot-<hex>``) and kept.
    * ``kill_sandbox_after`` deletes the source sandbox once the snapshot is stored; a
      ``leap0.Sandbox`` for it in the same stack is then gone, and refresh drops it.
    * Refresh finds the snapshot by name through the list call (the API has no call that
      reads one snapshot) and drops it from the stack when it is gone.
    * A sandbox restored from it depends on it when its ``snapshot_name`` is this
      resource's ``name`` output, so ``destroy`` deletes the sandbox first.
    """

    sandbox_id: pulumi.Output[str]
    name: pulumi.Output[str]
    kill_sandbox_after: pulumi.Output[bool]
    template_id: pulumi.Output[str]
    vcpu: pulumi.Output[int]
    memory: pulumi.Output[int]
    disk: pulumi.Output[int]
    created_at: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        opts: pulumi.ResourceOptions | None = None,
        *,
        sandbox_id: pulumi.Input[str] | None = None,
        name: pulumi.Input[str] | None = None,
        kill_sandbox_after: pulumi.Input[bool] | None = None,
    ) -> None:
        if sandbox_id is None and (opts is None or opts.id is None):
            raise TypeError("Snapshot needs sandbox_id")
        props: dict[str, Any] = {
            **dict.fromkeys(snapshot_provider.COMPUTED_OUTPUTS),
            "sandbox_id": sandbox_id, "name": name, "kill_sandbox_after": kill_sandbox_after,
        }
        super().__init__(SnapshotProvider(), resource_name, props, opts)

    @staticmethod
    def get(
        resource_name: str, id: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None
    ) -> Snapshot:
        """Read an existing snapshot into the program without managing it."""
        return Snapshot(resource_name, opts=pulumi.ResourceOptions.merge(opts,
                        pulumi.ResourceOptions(id=id)))
