"""Guardrails for ``leap0.Sandbox`` and ``leap0.Template``, as pulumi-policy policies that
run at preview time.

Use them in a pack (see ``examples/policy-pack``)::

    PolicyPack("leap0-sandbox-guardrails", policies=leap0_policy.sandbox_policies())

Each policy takes its settings from the pack's config (``pulumi policy ... --config`` or
``initial_config``), with the defaults in ``DEFAULTS``; the enforcement level of each can be
overridden the same way. Limits that are the API's own (the organization's sandbox limit)
come from ``spec.py``.

============================== ========= ===================================================
policy                         level     config (default)
============================== ========= ===================================================
leap0-egress-restricted        mandatory exceptions: names allowed open egress ([])
leap0-resource-ceilings        advisory  max_vcpu (4), max_memory (4096), max_timeout (3600)
leap0-allowed-templates        mandatory allowed_templates: names, or "x/" prefixes (system/)
leap0-read-only-mounts         mandatory none
leap0-reviewed-transform-...   mandatory reviewed_domains: where transforms may go ([])
leap0-stack-sandbox-limit      mandatory max_sandboxes (the organization limit, 3)
leap0-approved-registries      mandatory approved_registries: registries ("host[:port]")
                                         or image prefixes ("host/org/") templates may
                                         pull from ([]: none until a team approves some)
============================== ========= ===================================================

Egress, templates, mounts, transforms, registries and the stack limit are mandatory because
getting them wrong exposes data or credentials (an image from anywhere runs as the team's
code, and its registry sees the credentials) or fails ``pulumi up`` halfway; the ceilings
are advisory because they are a cost decision a team may knowingly make. A sandbox of a
user template also needs the template allowed by ``leap0-allowed-templates``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from pulumi_leap0 import spec
from pulumi_leap0.resource import SANDBOX_TYPE, TEMPLATE_TYPE

DEFAULTS: dict[str, dict[str, Any]] = {
    "leap0-egress-restricted": {"exceptions": []},
    "leap0-resource-ceilings": {"max_vcpu": 4, "max_memory": 4096, "max_timeout": 3600},
    "leap0-allowed-templates": {"allowed_templates": ["system/"]},
    "leap0-read-only-mounts": {},
    "leap0-reviewed-transform-domains": {"reviewed_domains": []},
    "leap0-stack-sandbox-limit": {"max_sandboxes": spec.MAX_SANDBOXES_PER_ORG},
    "leap0-approved-registries": {"approved_registries": []},
}


def _config(policy: str, args: ResourceValidationArgs | StackValidationArgs) -> dict[str, Any]:
    return {**DEFAULTS[policy], **(args.get_config() or {})}


def _sandbox_only(
    check: Callable[[str, Mapping[str, Any], dict[str, Any], ReportViolation], None], policy: str,
    resource_type: str = SANDBOX_TYPE,
) -> Callable[[ResourceValidationArgs, ReportViolation], None]:
    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        if args.resource_type == resource_type:
            check(args.name, args.props, _config(policy, args), report)

    return validate


def _number(props: Mapping[str, Any], name: str, default: int) -> int:
    # Numbers cross the engine as floats; 2.0 is the vcpu count 2.
    value = props.get(name)
    return default if value is None else int(value)


# --- The rules -------------------------------------------------------------------------------


def _egress(name: str, props: Mapping[str, Any], config: dict[str, Any],
            report: ReportViolation) -> None:
    policy = props.get("network_policy")
    mode = (policy or {}).get("mode") if isinstance(policy, Mapping) else None
    if mode in ("deny-all", "custom") or name in config["exceptions"]:
        return
    shown = "not set (allow-all)" if policy is None else f"mode {mode!r}"
    report(f"Sandbox '{name}': network_policy is {shown}; egress must be restricted with mode "
           "'deny-all' or 'custom' (or name the sandbox in this policy's 'exceptions').", None)


def _ceilings(name: str, props: Mapping[str, Any], config: dict[str, Any],
              report: ReportViolation) -> None:
    for prop, default, limit, unit in (
        ("vcpu", spec.VCPU_DEFAULT, config["max_vcpu"], ""),
        ("memory", spec.MEMORY_DEFAULT_MIB, config["max_memory"], " MiB"),
        ("timeout", spec.TIMEOUT_DEFAULT_S, config["max_timeout"], " s"),
    ):
        value = _number(props, prop, default)
        if value > limit:
            report(f"Sandbox '{name}': {prop} is {value}{unit}; the ceiling is "
                   f"{int(limit)}{unit} (config max_{prop}).", None)


def _templates(name: str, props: Mapping[str, Any], config: dict[str, Any],
               report: ReportViolation) -> None:
    template = props.get("template_name")
    allowed: list[str] = config["allowed_templates"]
    if isinstance(template, str) and any(
        template.startswith(entry) if entry.endswith("/") else template == entry
        for entry in allowed
    ):
        return
    report(f"Sandbox '{name}': template_name {template!r} is not allowed; allowed templates: "
           f"{', '.join(allowed) or 'none'} (entries ending in '/' are prefixes).", None)


def _read_only_mounts(name: str, props: Mapping[str, Any], _config: dict[str, Any],
                      report: ReportViolation) -> None:
    for index, mount in enumerate(props.get("mounts") or []):
        if isinstance(mount, Mapping) and mount.get("read_only") is False:
            report(f"Sandbox '{name}': mounts[{index}].read_only is false for "
                   f"{mount.get('mount_path')!r}; mounts must be read-only.", None)


def _transform_domains(name: str, props: Mapping[str, Any], config: dict[str, Any],
                       report: ReportViolation) -> None:
    policy = props.get("network_policy")
    if not isinstance(policy, Mapping):
        return
    reviewed = {d.lower() for d in config["reviewed_domains"]}
    for index, transform in enumerate(policy.get("transforms") or []):
        domain = str(transform.get("domain", "")).lower()
        if domain not in reviewed:
            # Header names only: the values are credentials.
            headers = ", ".join(sorted(transform.get("inject_headers") or {})) or "none"
            report(f"Sandbox '{name}': network_policy.transforms[{index}].domain {domain!r} "
                   f"(injecting headers: {headers}) is not a reviewed domain; add it to "
                   "'reviewed_domains' once credentials may be sent there.", None)


def _registries(name: str, props: Mapping[str, Any], config: dict[str, Any],
                report: ReportViolation) -> None:
    uri = props.get("uri")
    if not isinstance(uri, str):
        return  # unknown until an earlier resource exists: checked when it is known
    registry = spec.image_registry(uri)
    approved: list[str] = config["approved_registries"]
    reference = f"{registry}/{spec.split_image_reference(uri)[1]}"
    if any(reference.startswith(entry.lower()) if "/" in entry else registry == entry.lower()
           for entry in approved):
        return
    report(f"Template '{name}': uri {uri!r} pulls from registry {registry!r}, which is not "
           f"approved; approved: {', '.join(approved) or 'none'} (config "
           "'approved_registries': registries, or image prefixes ending in '/').", None)


def _stack_limit(args: StackValidationArgs, report: ReportViolation) -> None:
    limit = int(_config("leap0-stack-sandbox-limit", args)["max_sandboxes"])
    sandboxes = [r for r in args.resources if r.resource_type == SANDBOX_TYPE]
    if len(sandboxes) > limit:
        names = ", ".join(r.name for r in sandboxes)
        report(f"The stack declares {len(sandboxes)} sandboxes ({names}); an organization may "
               f"hold at most {limit}, so `pulumi up` would fail partway.", None)


# --- The policies ----------------------------------------------------------------------------


def _schema(**properties: dict[str, Any]) -> PolicyConfigSchema:
    return PolicyConfigSchema(properties=properties)


_STRINGS = {"type": "array", "items": {"type": "string"}}


def sandbox_policies() -> list[ResourceValidationPolicy | StackValidationPolicy]:
    """Every guardrail, with its default enforcement level and config schema."""
    resource_rules = [
        ("leap0-egress-restricted", "Sandboxes must restrict network egress.", _egress,
         EnforcementLevel.MANDATORY, _schema(exceptions=_STRINGS)),
        ("leap0-resource-ceilings", "Sandboxes stay under vcpu, memory and timeout ceilings.",
         _ceilings, EnforcementLevel.ADVISORY,
         _schema(max_vcpu={"type": "number"}, max_memory={"type": "number"},
                 max_timeout={"type": "number"})),
        ("leap0-allowed-templates", "Sandboxes use an allowed template.", _templates,
         EnforcementLevel.MANDATORY, _schema(allowed_templates=_STRINGS)),
        ("leap0-read-only-mounts", "Object-storage mounts are read-only.", _read_only_mounts,
         EnforcementLevel.MANDATORY, None),
        ("leap0-reviewed-transform-domains",
         "Credentials are injected only toward reviewed domains.", _transform_domains,
         EnforcementLevel.MANDATORY, _schema(reviewed_domains=_STRINGS)),
    ]
    policies: list[ResourceValidationPolicy | StackValidationPolicy] = [
        ResourceValidationPolicy(
            name=name, description=description, validate=_sandbox_only(check, name),
            enforcement_level=level, config_schema=schema,
        )
        for name, description, check, level, schema in resource_rules
    ]
    policies.append(ResourceValidationPolicy(
        name="leap0-approved-registries",
        description="Templates pull only from approved registries.",
        validate=_sandbox_only(_registries, "leap0-approved-registries", TEMPLATE_TYPE),
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=_schema(approved_registries=_STRINGS),
    ))
    policies.append(StackValidationPolicy(
        name="leap0-stack-sandbox-limit",
        description="A stack declares no more sandboxes than an organization may hold.",
        validate=_stack_limit,
        enforcement_level=EnforcementLevel.MANDATORY,
        config_schema=_schema(max_sandboxes={"type": "number"}),
    ))
    return policies
