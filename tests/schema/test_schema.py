"""schema.json: valid against Pulumi's metaschema, derived from spec.py, never hand-edited."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from pulumi_leap0 import schema, spec
from tests.support import shared_data_dir


@pytest.fixture(scope="module")
def metaschema() -> dict[str, Any]:
    text = (shared_data_dir() / "pulumi-package-metaschema.json").read_text()
    # The metaschema is written for ECMAScript regexes; Python's re spells named groups
    # (?P<name>...).
    return json.loads(re.sub(r"\(\?<([A-Za-z_][A-Za-z0-9_]*)>", r"(?P<\1>", text))


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return schema.build()


def test_the_committed_file_is_the_generated_one() -> None:
    assert schema.SCHEMA_PATH.read_text() == schema.render(), "run `make schema`"
    assert schema.main(["--check"]) == 0


def test_check_fails_on_a_stale_file(tmp_path: Any) -> None:
    stale = tmp_path / "schema.json"
    stale.write_text(schema.render().replace("at most 8", "at most 9"))
    assert schema.main(["--check", "--output", str(stale)]) == 1


def test_valid_against_pulumis_metaschema(
    metaschema: dict[str, Any], generated: dict[str, Any]
) -> None:
    jsonschema.validate(generated, metaschema)


def test_an_invalid_schema_is_caught(metaschema: dict[str, Any], generated: dict[str, Any]) -> None:
    broken = {**generated, "name": "not a name!"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, metaschema)


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_every_ref_resolves_and_every_token_is_ours(generated: dict[str, Any]) -> None:
    found = list(refs(generated))
    assert found
    for ref in found:
        assert ref.startswith("#/types/"), ref
        assert ref.removeprefix("#/types/") in generated["types"], ref
    for token in [*generated["types"], *generated["resources"]]:
        assert token.startswith("leap0:"), token


def test_replace_on_changes_is_exactly_specs_list(generated: dict[str, Any]) -> None:
    from pulumi_leap0.provider.sandbox import REPLACES

    sandbox = generated["resources"]["leap0:index:Sandbox"]
    assert set(REPLACES) == {*spec.REPLACE_ON_CHANGE, "snapshot_name"}
    for side in ("inputProperties", "properties"):
        marked = {n for n, p in sandbox[side].items() if p.get("replaceOnChanges")}
        assert marked == set(REPLACES), side
    # Every input of a snapshot replaces it, and nothing computed is marked.
    snapshot = generated["resources"]["leap0:index:Snapshot"]
    inputs = snapshot["inputProperties"]
    assert set(inputs) == {"sandbox_id", "name", "kill_sandbox_after"}
    assert all(p.get("replaceOnChanges") for p in inputs.values())
    marked = {n for n, p in snapshot["properties"].items() if p.get("replaceOnChanges")}
    assert marked == set(inputs)
    assert snapshot["requiredInputs"] == ["sandbox_id"]


def test_secrets_follow_spec(generated: dict[str, Any]) -> None:
    sandbox = generated["resources"]["leap0:index:Sandbox"]
    types = generated["types"]
    assert sandbox["inputProperties"]["env_vars"]["secret"]
    assert sandbox["properties"]["env_vars"]["secret"]
    mount = types["leap0:index:Mount"]["properties"]
    assert mount["access_key_id"]["secret"] and mount["secret_access_key"]["secret"]
    assert types["leap0:index:Transform"]["properties"]["inject_headers"]["secret"]
    assert generated["config"]["variables"]["apiKey"]["secret"]
    # ...and that is every credential spec.py knows of.
    assert spec.SECRET_PATHS == (
        "env_vars.{}",
        "mounts[].access_key_id",
        "mounts[].secret_access_key",
        "network_policy.transforms[].inject_headers.{}",
    )


def test_limits_come_from_spec(generated: dict[str, Any]) -> None:
    inputs = generated["resources"]["leap0:index:Sandbox"]["inputProperties"]
    assert f"at most {spec.VCPU_MAX}" in inputs["vcpu"]["description"]
    assert f"at least {spec.MEMORY_MIN_MIB}" in inputs["memory"]["description"]
    assert inputs["memory"]["default"] == spec.MEMORY_DEFAULT_MIB
    assert f"at most {spec.MAX_MOUNTS} items" in inputs["mounts"]["description"]
    # template_name or snapshot_name: neither alone is required, the check names the one.
    assert generated["resources"]["leap0:index:Sandbox"]["requiredInputs"] == []
    assert "snapshot_name" in inputs["template_name"]["description"]
    snapshot = generated["resources"]["leap0:index:Snapshot"]["inputProperties"]
    assert f"at most {spec.MAX_SNAPSHOT_NAME_CHARS} characters" in snapshot["name"]["description"]
    states = [e["value"] for e in generated["types"]["leap0:index:SandboxState"]["enum"]]
    assert states == [s.value for s in spec.SandboxState]


def test_template_follows_spec(generated: dict[str, Any]) -> None:
    template = generated["resources"]["leap0:index:Template"]
    inputs = template["inputProperties"]
    assert template["requiredInputs"] == ["name", "uri"]
    assert {n for n, p in inputs.items() if p.get("replaceOnChanges")} == set(
        spec.TEMPLATE_REPLACE_ON_CHANGE)
    assert spec.TEMPLATE_SECRET_PATHS == ("credentials",) and inputs["credentials"]["secret"]
    # Outputs never carry the credentials, only their fingerprint.
    assert "credentials" not in template["properties"]
    assert "credentials_sha256" in template["properties"]
    assert f"at most {spec.MAX_TEMPLATE_URI_CHARS}" in inputs["uri"]["description"]
    assert inputs["credentials"]["$ref"] == "#/types/leap0:index:RegistryCredentials"
