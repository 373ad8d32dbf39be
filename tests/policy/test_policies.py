"""The guardrails: each policy's validate called directly, and the pack served over gRPC as
the engine drives it (Analyze, AnalyzeStack, Configure)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc
from pulumi_policy import (
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.policy import PolicyCustomTimeouts, PolicyResource

from pulumi_leap0.policy import sandbox_policies
from pulumi_leap0.resource import SANDBOX_TYPE
from tests.support import REPO_ROOT

COMPLIANT: dict[str, Any] = {
    "template_name": "system/debian:bookworm", "vcpu": 2.0, "memory": 2048.0, "timeout": 600.0,
    "env_vars": {"STAGE": "ci"},
    "network_policy": {"mode": "custom", "allow_domains": ["pypi.org"]},
    "mounts": [{"type": "object-storage", "bucket": "models", "mount_path": "/models",
                "endpoint": "https://s3.example.com", "read_only": True}],
}
SECRET = "sk-live-do-not-print"

# (change to the compliant sandbox, the policy it breaks, words the message must hold)
VIOLATIONS = [
    ({"network_policy": None}, "leap0-egress-restricted", ["network_policy", "allow-all"]),
    ({"network_policy": {"mode": "allow-all"}}, "leap0-egress-restricted", ["'allow-all'"]),
    ({"vcpu": 8.0}, "leap0-resource-ceilings", ["vcpu is 8", "ceiling is 4"]),
    ({"memory": 8192.0}, "leap0-resource-ceilings", ["memory is 8192 MiB", "4096 MiB"]),
    ({"timeout": 28800.0}, "leap0-resource-ceilings", ["timeout is 28800 s", "3600 s"]),
    ({"template_name": "my-own/image"}, "leap0-allowed-templates", ["'my-own/image'", "system/"]),
    ({"mounts": [{**COMPLIANT["mounts"][0], "read_only": False}]}, "leap0-read-only-mounts",
     ["mounts[0].read_only", "'/models'"]),
    ({"network_policy": {"mode": "custom", "transforms": [
        {"domain": "evil.example.com", "inject_headers": {"Authorization": SECRET}}]}},
     "leap0-reviewed-transform-domains", ["transforms[0].domain", "'evil.example.com'",
                                          "Authorization"]),
]


def resource_policies() -> dict[str, ResourceValidationPolicy]:
    return {p.name: p for p in sandbox_policies() if isinstance(p, ResourceValidationPolicy)}


def run(policy: ResourceValidationPolicy, props: dict[str, Any],
        config: dict[str, Any] | None = None, resource_type: str = SANDBOX_TYPE) -> list[str]:
    messages: list[str] = []
    options = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])
    args = ResourceValidationArgs(resource_type, props, "urn:pulumi:dev::p::t::box", "box",
                                  options, None, config)
    policy.validate(args, lambda message, urn=None: messages.append(message))
    return messages


def test_a_compliant_sandbox_breaks_no_policy() -> None:
    for policy in resource_policies().values():
        assert run(policy, COMPLIANT) == [], policy.name


@pytest.mark.parametrize(("change", "policy_name", "words"), VIOLATIONS,
                         ids=[f"{v[1]}:{next(iter(v[0]))}" for v in VIOLATIONS])
def test_each_rule_reports_resource_property_value_and_rule(
    change: dict[str, Any], policy_name: str, words: list[str]
) -> None:
    props = {**COMPLIANT, **change}
    reported = {name: run(policy, props) for name, policy in resource_policies().items()}
    assert [name for name, messages in reported.items() if messages] == [policy_name]
    (message,) = reported[policy_name]
    assert message.startswith("Sandbox 'box':")
    for word in words:
        assert word in message
    assert SECRET not in message


def test_other_resource_types_are_left_alone() -> None:
    for policy in resource_policies().values():
        assert run(policy, {"vcpu": 99}, resource_type="aws:s3/bucket:Bucket") == []


def test_config_changes_the_rules() -> None:
    policies = resource_policies()
    assert run(policies["leap0-resource-ceilings"], COMPLIANT, {"max_vcpu": 1}) != []
    assert run(policies["leap0-egress-restricted"], {**COMPLIANT, "network_policy": None},
               {"exceptions": ["box"]}) == []
    assert run(policies["leap0-allowed-templates"], {**COMPLIANT, "template_name": "team/x"},
               {"allowed_templates": ["team/x"]}) == []
    transform = {"mode": "custom", "transforms": [{"domain": "api.x.com"}]}
    assert run(policies["leap0-reviewed-transform-domains"],
               {**COMPLIANT, "network_policy": transform},
               {"reviewed_domains": ["API.x.com"]}) == []


def test_defaults_count_when_inputs_are_left_out() -> None:
    minimal = {"template_name": "system/debian:bookworm", "network_policy": {"mode": "deny-all"}}
    for policy in resource_policies().values():
        assert run(policy, minimal) == [], policy.name


def stack_policy() -> StackValidationPolicy:
    (policy,) = [p for p in sandbox_policies() if isinstance(p, StackValidationPolicy)]
    return policy


def test_the_stack_limit_counts_sandboxes_only() -> None:
    def resources(n: int) -> list[PolicyResource]:
        return [PolicyResource(t, {}, f"urn:{t}:{i}", f"r{i}", None, None, None, [], {})  # type: ignore[arg-type]
                for i, t in enumerate([SANDBOX_TYPE] * n + ["aws:s3/bucket:Bucket"] * 2)]

    def violations(count: int) -> list[str]:
        messages: list[str] = []
        stack_policy().validate(StackValidationArgs(resources(count)),
                                lambda m, urn=None: messages.append(m))
        return messages

    assert violations(3) == []
    (message,) = violations(4)
    assert "4 sandboxes" in message and "at most 3" in message


# --- The pack, over the Analyzer gRPC interface ----------------------------------------------


@pytest.fixture(scope="module")
def analyzer() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    pack = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "examples" / "policy-pack" / "__main__.py")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert pack.stdout is not None
        port = pack.stdout.readline().strip()
        assert port.isdigit(), pack.stderr.read() if pack.stderr else port
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        pack.kill()
        pack.wait()


def struct(props: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    json_format.ParseDict(props, message)
    return message


def analyze(stub: analyzer_pb2_grpc.AnalyzerStub, props: dict[str, Any],
            name: str = "box") -> list[Any]:
    request = analyzer_pb2.AnalyzeRequest(
        type=SANDBOX_TYPE, properties=struct(props), urn=f"urn:pulumi:dev::p::t::{name}",
        name=name)
    return list(stub.Analyze(request).diagnostics)


def test_the_pack_finds_nothing_in_a_compliant_sandbox(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    assert analyze(analyzer, COMPLIANT) == []


def test_the_pack_reports_violations_with_their_levels(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    bad = {**COMPLIANT, "network_policy": None, "vcpu": 8.0}
    found = {d.policyName: d for d in analyze(analyzer, bad)}
    assert set(found) == {"leap0-egress-restricted", "leap0-resource-ceilings"}
    assert found["leap0-egress-restricted"].enforcementLevel == analyzer_pb2.MANDATORY
    assert found["leap0-resource-ceilings"].enforcementLevel == analyzer_pb2.ADVISORY
    assert "Sandbox 'box'" in found["leap0-egress-restricted"].message


def test_the_pack_checks_the_stack(analyzer: analyzer_pb2_grpc.AnalyzerStub) -> None:
    resources = [analyzer_pb2.AnalyzerResource(
        type=SANDBOX_TYPE, properties=struct(COMPLIANT), urn=f"urn:pulumi:dev::p::t::b{i}",
        name=f"b{i}") for i in range(4)]
    found = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=resources))
    assert [d.policyName for d in found.diagnostics] == ["leap0-stack-sandbox-limit"]
    fewer = analyzer.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=resources[:3]))
    assert list(fewer.diagnostics) == []


def test_pack_config_overrides_levels_and_settings(
    analyzer: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    analyzer.Configure(analyzer_pb2.ConfigureAnalyzerRequest(policyConfig={
        "leap0-resource-ceilings": analyzer_pb2.PolicyConfig(
            enforcementLevel=analyzer_pb2.MANDATORY, properties=struct({"max_vcpu": 1})),
        "leap0-egress-restricted": analyzer_pb2.PolicyConfig(
            enforcementLevel=analyzer_pb2.DISABLED),
    }))
    try:
        found = {d.policyName: d for d in analyze(analyzer, {**COMPLIANT, "network_policy": None})}
        assert set(found) == {"leap0-resource-ceilings"}
        assert found["leap0-resource-ceilings"].enforcementLevel == analyzer_pb2.MANDATORY
        assert "vcpu is 2" in found["leap0-resource-ceilings"].message
    finally:
        analyzer.Configure(analyzer_pb2.ConfigureAnalyzerRequest(policyConfig={}))


# --- Templates -------------------------------------------------------------------------------

TEMPLATE = {"name": "app", "uri": "ghcr.io/acme/app:1.2"}


@pytest.mark.parametrize(("uri", "approved", "passes"), [
    ("ghcr.io/acme/app:1.2", ["ghcr.io"], True),
    ("ghcr.io/acme/app:1.2", ["GHCR.io"], True),
    ("ghcr.io/acme/app:1.2", ["ghcr.io/acme/"], True),
    ("ghcr.io/evil/app:1.2", ["ghcr.io/acme/"], False),
    ("ghcr.io.evil.com/acme/app", ["ghcr.io"], False),
    ("python:3.12", ["docker.io"], True),  # no registry named: Docker Hub's
    ("python:3.12", ["ghcr.io"], False),
    ("127.0.0.1:5000/x/y", ["127.0.0.1:5000"], True),
    ("127.0.0.1:5001/x/y", ["127.0.0.1:5000"], False),
    ("ghcr.io/acme/app:1.2", [], False),  # nothing is approved until a team says so
])
def test_templates_pull_only_from_approved_registries(uri: str, approved: list[str],
                                                      passes: bool) -> None:
    from pulumi_leap0.resource import TEMPLATE_TYPE

    policy = resource_policies()["leap0-approved-registries"]
    assert policy.enforcement_level.value == "mandatory"
    messages = run(policy, {**TEMPLATE, "uri": uri}, {"approved_registries": approved},
                   resource_type=TEMPLATE_TYPE)
    assert (messages == []) is passes, messages
    if not passes:
        assert uri in messages[0] and "approved_registries" in messages[0]
    # Sandboxes are not its business, and no sandbox rule looks at a template.
    assert run(policy, COMPLIANT, {"approved_registries": approved}) == []
    for other in resource_policies().values():
        if other.name != policy.name:
            assert run(other, {**TEMPLATE, "uri": uri}, resource_type=TEMPLATE_TYPE) == []


def test_a_template_whose_uri_is_unknown_is_checked_later() -> None:
    from pulumi_leap0.resource import TEMPLATE_TYPE

    policy = resource_policies()["leap0-approved-registries"]
    assert run(policy, {"name": "app"}, resource_type=TEMPLATE_TYPE) == []
