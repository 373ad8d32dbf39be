"""Done when 1 and 2: `pulumi up` of a sandbox with every input, secrets kept out of state,
outputs shown; `preview --diff --expect-no-changes` on the same program and on one that only
re-spells it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulumi_leap0.client import Leap0Client
from pulumi_leap0.pulumi_cli import Stack
from tests.cli.conftest import SANDBOX, delete_all, make_stacks
from tests.fixtures.backend import BackendServer
from tests.fixtures.s3 import S3

ENV_SECRET = "env-value-7c1e9a"
HEADER_SECRET = "Bearer header-value-52d0f4"


def program(s3: S3, *, respelled: bool = False) -> str:
    """One sandbox with every input; ``respelled`` writes the same sandbox differently."""
    if respelled:
        # Defaults written out, domains in another case and order, vcpu as a float, the
        # mount's optional fields spelled, the transform's header names in another order.
        domains = '["EXAMPLE.org", "api.Example.com"]'
        cidrs = '["192.0.2.0/24", "10.0.0.0/8"]'
        vcpu, extra_mount = "2.0", 'type="object-storage", read_only=True,'
        strip = '["X-Trace", "Cookie"]'
    else:
        domains = '["api.example.com", "example.org"]'
        cidrs = '["10.0.0.0/8", "192.0.2.0/24"]'
        vcpu, extra_mount = "2", ""
        strip = '["Cookie", "X-Trace"]'
    return f'''
box = leap0.Sandbox(
    "full",
    template_name="system/debian:bookworm",
    env_vars={{"TOKEN": "{ENV_SECRET}", "MODE": "test"}},
    vcpu={vcpu},
    memory=1024,
    timeout=900,
    auto_pause=False,
    mounts=[leap0.MountArgs(
        bucket="{s3.bucket}", mount_path="/models", endpoint="{s3.endpoint}",
        prefix="release/", access_key_id="{s3.access_key_id}",
        secret_access_key="{s3.secret_access_key}", {extra_mount}
    )],
    network_policy=leap0.NetworkPolicyArgs(
        mode="custom",
        allow_domains={domains},
        allow_cidrs={cidrs},
        transforms=[leap0.TransformArgs(
            domain="api.example.com",
            inject_headers={{"Authorization": "{HEADER_SECRET}"}},
            strip_headers={strip},
        )],
    ),
)
pulumi.export("sandbox_id", box.id)
pulumi.export("state", box.state)
pulumi.export("memory", box.memory)
pulumi.export("mount_path", box.mounts.apply(lambda mounts: mounts[0]["mount_path"]))
'''


@pytest.fixture(scope="module")
def full(pulumi_bin: Path, backend: BackendServer, s3: S3,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    api_key = backend.new_api_key()
    new_stack, _ = make_stacks(pulumi_bin, backend, api_key, tmp_path_factory.mktemp("full"))
    stack = new_stack(program(s3))
    stack.up()
    yield stack, api_key
    delete_all(backend, api_key)


def test_up_of_every_input_runs_and_keeps_secrets_out_of_state(
    full: tuple[Stack, str], backend: BackendServer, s3: S3
) -> None:
    stack, api_key = full
    outputs = stack.outputs()
    assert outputs["state"] == "running"
    assert outputs["memory"] == 1024
    assert outputs["mount_path"] == "[secret]"  # mounts with credentials are secret whole
    with Leap0Client(api_key, backend.base_url) as leap0:
        sandbox = leap0.get_sandbox(outputs["sandbox_id"])
    assert sandbox.state.value == "running"
    assert [m.mount_path for m in sandbox.mounts] == ["/models"]
    assert sandbox.network_policy is not None
    assert [t.domain for t in sandbox.network_policy.transforms] == ["api.example.com"]

    state = json.dumps(stack.export())
    for secret in (ENV_SECRET, HEADER_SECRET, s3.secret_access_key, s3.access_key_id):
        assert secret not in state
    [resource] = stack.resources(SANDBOX)
    assert resource["id"] == outputs["sandbox_id"]
    shown = stack.outputs(show_secrets=True)
    assert shown["mount_path"] == "/models"


@pytest.mark.parametrize("respelled", [False, True], ids=["unchanged", "respelled"])
def test_preview_of_the_same_sandbox_expects_no_changes(
    full: tuple[Stack, str], s3: S3, respelled: bool
) -> None:
    stack, _ = full
    (stack.project_dir / "__main__.py").write_text(
        (stack.project_dir / "__main__.py").read_text().split("\nbox = ")[0]
        + program(s3, respelled=respelled)
    )
    done = stack.preview("--diff", "--expect-no-changes", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
