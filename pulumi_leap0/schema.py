"""``schema.json``, the Pulumi package schema of ``leap0.Sandbox``, ``leap0.Template`` and
``leap0.Snapshot``,
generated from ``spec.py``.

``python -m pulumi_leap0.schema`` writes it; ``--check`` exits 1 when the committed file
differs from what ``spec.py`` says today. Never edit ``schema.json`` by hand: a limit,
a description, a secret or a replace-on-change rule changes in ``spec.py`` and flows here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel

from pulumi_leap0 import spec
from pulumi_leap0.client import API_KEY_ENV, BASE_URL_ENV, DEFAULT_BASE_URL
from pulumi_leap0.provider.base import CREATE_TIMEOUT_DEFAULT_S
from pulumi_leap0.provider.sandbox import REPLACES

PACKAGE = "leap0"
SANDBOX = f"{PACKAGE}:index:Sandbox"
TEMPLATE = f"{PACKAGE}:index:Template"
SNAPSHOT = f"{PACKAGE}:index:Snapshot"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.json"

#: Object and enum types, by the spec model or JSON-schema title they come from.
TYPE_TOKENS = {
    "MountRequest": f"{PACKAGE}:index:Mount",
    "NetworkPolicy": f"{PACKAGE}:index:NetworkPolicy",
    "TransformRule": f"{PACKAGE}:index:Transform",
    "RegistryCredentials": f"{PACKAGE}:index:RegistryCredentials",
    "ImageConfig": f"{PACKAGE}:index:ImageConfig",
}
NETWORK_MODE = f"{PACKAGE}:index:NetworkPolicyMode"
SANDBOX_STATE = f"{PACKAGE}:index:SandboxState"

# Limits JSON Schema states as keywords; Pulumi's typeSpec has no such keywords, so they
# are said in the description, where users of every language read them.
_LIMIT_WORDS = {
    "minimum": "at least {}",
    "maximum": "at most {}",
    "multipleOf": "a multiple of {}",
    "maxItems": "at most {} items",
    "minLength": "at least {} characters",
    "maxLength": "at most {} characters",
}


def _describe(schema: dict[str, Any]) -> str:
    text = str(schema.get("description", "")).strip()
    # An optional field's limits sit on its non-null branch.
    ruled = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema)
    limits = [words.format(ruled[key]) for key, words in _LIMIT_WORDS.items() if key in ruled]
    if limits:
        text += f" Must be {', '.join(limits)}."
    if "default" in schema and schema["default"] not in (None, [], {}, ""):
        text += f" Defaults to {json.dumps(schema['default'])}."
    return text.strip()


def _type(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON-schema type (from pydantic) as a Pulumi typeSpec."""
    if "anyOf" in schema:
        (schema,) = [s for s in schema["anyOf"] if s.get("type") != "null"]
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return {"$ref": f"#/types/{TYPE_TOKENS[name]}"}
    if schema.get("enum") == list(get_args(spec.NetworkMode)):
        return {"$ref": f"#/types/{NETWORK_MODE}"}
    kind = schema.get("type", "string")
    if kind == "array":
        return {"type": "array", "items": _type(schema["items"])}
    if kind == "object":
        return {"type": "object", "additionalProperties": _type(schema["additionalProperties"])}
    return {"type": kind}


def _property(schema: dict[str, Any], *, replace_on_changes: bool = False) -> dict[str, Any]:
    prop = {**_type(schema), "description": _describe(schema)}
    default = schema.get("default")
    if isinstance(default, bool | int | float | str) and default != "":
        prop["default"] = default
    if schema.get("secret"):
        prop["secret"] = True
    if replace_on_changes:
        prop["replaceOnChanges"] = True
    return prop


def _object_type(model: type[BaseModel], *, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    schema = model.model_json_schema()
    properties = {name: _property(s) for name, s in schema["properties"].items()}
    properties.update(extra or {})
    return {
        "type": "object",
        "description": schema.get("description", ""),
        "properties": properties,
        "required": sorted(schema.get("required", [])),
    }


def _enum(description: str, values: list[str]) -> dict[str, Any]:
    return {
        "type": "string",
        "description": description,
        "enum": [{"value": value, "name": value.replace("-", "_").upper()} for value in values],
    }


def _template() -> dict[str, Any]:
    request = spec.TemplateUploadRequest.model_json_schema()
    inputs = {
        name: _property(s, replace_on_changes=name in spec.TEMPLATE_REPLACE_ON_CHANGE)
        for name, s in request["properties"].items()
    }
    computed = {
        name: _property(s)
        for name, s in spec.Template.model_json_schema()["properties"].items()
        if name in ("digest", "image_config", "is_system", "created_at")
    }
    computed["credentials_sha256"] = {
        "type": "string",
        "description": "A fingerprint of `credentials` (never the values themselves).",
    }
    return {
        "description": "A Leap0 template: a container image pulled and converted to a root "
        f"file system. A new `uri` replaces it; a new `name` renames it in place; new "
        f"`credentials` alone change nothing. An organization holds at most "
        f"{spec.MAX_TEMPLATES_PER_ORG} templates. The API reads no template back, so "
        "refresh keeps what the last update recorded.",
        "inputProperties": inputs,
        "requiredInputs": sorted(request.get("required", [])),
        "properties": {**{k: v for k, v in inputs.items() if k != "credentials"}, **computed},
        "required": sorted({*request.get("required", []), "digest", "image_config",
                            "is_system", "created_at"}),
    }


def _snapshot() -> dict[str, Any]:
    request = spec.SnapshotCreateRequest.model_json_schema()
    inputs = {
        "sandbox_id": {"type": "string", "replaceOnChanges": True,
                       "description": "The sandbox (`sbx-...`) to snapshot."},
        **{name: _property(s, replace_on_changes=True)
           for name, s in request["properties"].items()},
    }
    inputs["name"]["description"] += (" When omitted, the provider chooses one once "
                                      "(`snapshot-<hex>`) and keeps it.")
    computed = {
        name: _property(s)
        for name, s in spec.Snapshot.model_json_schema()["properties"].items()
        if name in ("template_id", "vcpu", "memory", "disk", "created_at")
    }
    return {
        "description": "A snapshot of a Leap0 sandbox's files and configuration, which "
        "`Sandbox.snapshot_name` restores. Any change replaces it; refresh finds it by name "
        f"through the list call. An organization keeps at most {spec.MAX_SNAPSHOTS_PER_ORG}.",
        "inputProperties": inputs,
        "requiredInputs": ["sandbox_id"],
        "properties": {**inputs, **computed},
        "required": sorted({"sandbox_id", "name", "kill_sandbox_after", *computed}),
    }


def build() -> dict[str, Any]:
    request = spec.SandboxCreateRequest.model_json_schema()
    inputs = {
        name: _property(s, replace_on_changes=name in REPLACES)
        for name, s in request["properties"].items()
    }
    inputs["template_name"]["description"] += " Required unless `snapshot_name` is set."
    inputs["snapshot_name"] = {
        "type": "string", "replaceOnChanges": True,
        "description": "A snapshot to restore the sandbox from (files, template, vcpu, "
        "memory and environment); then " + ", ".join(f"`{n}`" for n in spec.SNAPSHOT_FIXES)
        + " must not be set. Not sent as a sandbox field: create restores the snapshot.",
    }
    inputs["create_timeout"] = {
        "type": "number",
        "description": "Seconds create waits for the sandbox to run before it deletes it "
        "and fails. Not sent to Leap0; changing it changes nothing in the sandbox.",
        "default": CREATE_TIMEOUT_DEFAULT_S,
    }
    inputs["adopt_id"] = {
        "type": "string",
        "description": "An existing sandbox (`sbx-...`) that create takes over instead of "
        "making a new one, since `pulumi import` does not work for dynamic providers.",
    }
    computed = {
        name: _property(s)
        for name, s in spec.Sandbox.model_json_schema()["properties"].items()
        if name in ("template_id", "disk", "created_at")
    }
    computed["state"] = {"$ref": f"#/types/{SANDBOX_STATE}",
                         "description": "Current state of the sandbox."}
    outputs = {**inputs, **computed}
    mount_id = {"id": {"type": "string", "description": "Assigned by Leap0 (`mnt-...`); "
                       "output only, kept when a mount changes in place."}}
    return {
        "name": PACKAGE,
        "displayName": "Leap0",
        "description": "Leap0 sandboxes as infrastructure: isolated sandboxes with CPU and "
        "memory limits, read-only object-storage mounts and an egress network policy.",
        "keywords": ["pulumi", "leap0", "sandbox", "category/infrastructure"],
        "config": {
            "variables": {
                "apiKey": {
                    "type": "string",
                    "secret": True,
                    "description": "Leap0 API key.",
                    "defaultInfo": {"environment": [API_KEY_ENV]},
                },
                "baseUrl": {
                    "type": "string",
                    "description": f"Leap0 API address; defaults to {DEFAULT_BASE_URL}.",
                    "defaultInfo": {"environment": [BASE_URL_ENV]},
                },
            },
        },
        "types": {
            TYPE_TOKENS["MountRequest"]: _object_type(spec.MountRequest, extra=mount_id),
            TYPE_TOKENS["NetworkPolicy"]: _object_type(spec.NetworkPolicy),
            TYPE_TOKENS["TransformRule"]: _object_type(spec.TransformRule),
            TYPE_TOKENS["RegistryCredentials"]: _object_type(spec.RegistryCredentials),
            TYPE_TOKENS["ImageConfig"]: _object_type(spec.ImageConfig),
            NETWORK_MODE: _enum("Egress policy mode.", list(get_args(spec.NetworkMode))),
            SANDBOX_STATE: _enum("Lifecycle state of a sandbox.",
                                 [state.value for state in spec.SandboxState]),
        },
        "resources": {
            SANDBOX: {
                "description": "A Leap0 sandbox. A change to "
                + ", ".join(f"`{name}`" for name in REPLACES)
                + " replaces it (the old one is deleted first: an organization holds at most "
                f"{spec.MAX_SANDBOXES_PER_ORG} sandboxes); mounts change in place.",
                "inputProperties": inputs,
                # template_name, unless snapshot_name: the check says which is missing.
                "requiredInputs": [],
                "properties": outputs,
                "required": sorted({*request.get("required", []), *computed,
                                    "vcpu", "memory", "timeout", "auto_pause"}),
            },
            TEMPLATE: _template(),
            SNAPSHOT: _snapshot(),
        },
        "language": {"python": {"packageName": "pulumi_leap0"}},
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if schema.json differs from the generated schema")
    parser.add_argument("--output", type=Path, default=SCHEMA_PATH)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run `make schema`", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
