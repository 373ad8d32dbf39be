"""Done when 4: out-of-band deletion is drift `pulumi refresh` removes; a pause is not."""

from __future__ import annotations

from pulumi_leap0.client import Leap0Client
from tests.cli.conftest import SANDBOX, NewStack, sandboxes

PROGRAM = '''
box = leap0.Sandbox("box", template_name="system/debian:bookworm",
                    network_policy=leap0.NetworkPolicyArgs(mode="deny-all"))
pulumi.export("sandbox_id", box.id)
'''


def test_refresh_drops_a_sandbox_deleted_out_of_band_and_up_recreates_it(
    new_stack: NewStack, client: Leap0Client
) -> None:
    stack = new_stack(PROGRAM)
    stack.up()
    [gone] = sandboxes(client)
    client.delete_sandbox(gone)

    stack.refresh()
    assert stack.resources(SANDBOX) == []
    stack.up()
    [again] = sandboxes(client)
    assert again != gone
    assert stack.outputs()["sandbox_id"] == again


def test_a_paused_sandbox_is_no_drift(new_stack: NewStack, client: Leap0Client) -> None:
    stack = new_stack(PROGRAM)
    stack.up()
    [sandbox_id] = sandboxes(client)
    client.pause_sandbox(sandbox_id)

    stack.refresh("--expect-no-changes")
    [resource] = stack.resources(SANDBOX)
    assert resource["id"] == sandbox_id
    done = stack.preview("--diff", "--expect-no-changes", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sandboxes(client) == [sandbox_id]
