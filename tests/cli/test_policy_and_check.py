"""Done when 5 and 6: the policy pack gates `pulumi preview`; an invalid input fails preview
before any request reaches Leap0."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import NewStack
from tests.fixtures.backend import BackendServer
from tests.fixtures.s3 import CountingProxy
from tests.support import REPO_ROOT

#: The pack as an executable analyzer (see examples/policy-pack/analyzer for why not the
#: directory).
PACK = str(REPO_ROOT / "examples" / "policy-pack" / "analyzer")

NON_COMPLIANT = '''
leap0.Sandbox("open", template_name="system/debian:bookworm")
leap0.Sandbox("foreign", template_name="acme/tools:1",
              network_policy=leap0.NetworkPolicyArgs(mode="deny-all"))
# A writable mount never gets as far as the pack: check refuses it first (the API would).
leap0.Sandbox("fourth", template_name="system/debian:bookworm",
              network_policy=leap0.NetworkPolicyArgs(mode="deny-all"))
leap0.Sandbox("leaky", template_name="system/debian:bookworm",
              network_policy=leap0.NetworkPolicyArgs(
                  mode="custom", allow_domains=["api.example.com"],
                  transforms=[leap0.TransformArgs(domain="api.example.com",
                                                  inject_headers={"X-Key": "k-1f2e"})]))
'''

COMPLIANT = '''
leap0.Sandbox("big", template_name="system/debian:bookworm", memory=8192,
              network_policy=leap0.NetworkPolicyArgs(mode="deny-all"))
leap0.Sandbox("small", template_name="system/debian:bookworm", memory=1024,
              network_policy=leap0.NetworkPolicyArgs(mode="deny-all"))
'''


def test_policy_pack_names_each_mandatory_violation(new_stack: NewStack) -> None:
    stack = new_stack(NON_COMPLIANT)
    done = stack.preview("--policy-pack", PACK, check=False)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    for resource, rule, words in (
        ("open", "leap0-egress-restricted", "network_policy"),
        ("foreign", "leap0-allowed-templates", "template_name"),
        ("leaky", "leap0-reviewed-transform-domains", "network_policy.transforms[0].domain"),
        # Four sandboxes: more than an organization may hold.
        ("leap0-test-test", "leap0-stack-sandbox-limit", "sandboxes"),
    ):
        blocks = [b for b in out.split("[mandatory]") if b.lstrip().startswith(rule)]
        assert blocks, f"{rule} not reported:\n{out}"
        assert any(resource in b and words in b for b in blocks), f"{rule}:\n{out}"
    assert "k-1f2e" not in out  # a header value is a credential, even in a violation


def test_policy_pack_passes_compliant_shows_advisory_and_takes_config(
    new_stack: NewStack, tmp_path: Path
) -> None:
    stack = new_stack(COMPLIANT)
    done = stack.preview("--policy-pack", PACK, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "[advisory]" in out and "leap0-resource-ceilings" in out and "8192" in out
    assert "[mandatory]" not in out

    config = tmp_path / "policy-config.json"
    config.write_text(json.dumps({
        "leap0-resource-ceilings": {"max_memory": 512},
        "leap0-stack-sandbox-limit": {"max_sandboxes": 1},
    }))
    done = stack.preview("--policy-pack", PACK, "--policy-pack-config", str(config), check=False)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert "the ceiling is 512 MiB" in out and "memory is 1024" in out
    assert "leap0-stack-sandbox-limit" in out.split("[mandatory]", 1)[-1]


def test_invalid_input_fails_preview_and_nothing_reaches_leap0(
    new_stack: NewStack, backend: BackendServer
) -> None:
    proxy = CountingProxy(backend.port)
    try:
        stack = new_stack('leap0.Sandbox("odd", template_name="system/debian:bookworm", '
                          'memory=1023)\n', base_url=f"http://127.0.0.1:{proxy.port}")
        done = stack.preview(check=False)
        out = done.stdout + done.stderr
        assert done.returncode != 0, out
        assert "property memory value {1023}" in out, out
        assert "must be an even number of MiB from 512 to 8192" in out
        done = stack.up(check=False)
        assert done.returncode != 0
        assert proxy.bytes_from_server == 0  # not one request: no create, not even a list
    finally:
        proxy.close()
