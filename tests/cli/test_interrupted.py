"""Done when 7: an `up` killed while a create is in flight leaves no orphan once the user
follows the README's procedure (cancel, refresh clearing the interrupted creates, delete
the sandboxes no state holds, up)."""

from __future__ import annotations

import time

from pulumi_leap0.client import Leap0Client
from pulumi_leap0.pulumi_cli import interrupt
from tests.cli.conftest import SANDBOX, NewStack, sandboxes

PROGRAM = '''
leap0.Sandbox("box", template_name="system/debian:bookworm",
              network_policy=leap0.NetworkPolicyArgs(mode="deny-all"))
leap0.Sandbox("other", template_name="system/debian:bookworm",
              network_policy=leap0.NetworkPolicyArgs(mode="deny-all"))
'''


def test_a_killed_up_leaves_no_orphan_after_the_readme_procedure(
    new_stack: NewStack, client: Leap0Client
) -> None:
    stack = new_stack(PROGRAM)
    running = stack.start("up", "--yes", "--skip-preview")
    deadline = time.monotonic() + 120
    # Kill the CLI and everything it started (language host, program, provider) as soon as
    # Leap0 has accepted a create: the provider is then waiting for that sandbox to run.
    while not sandboxes(client):
        assert running.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    interrupt(running)
    pending = [op["resource"]["urn"] for op in stack.export()["deployment"]
               .get("pending_operations", []) if op["type"] == "creating"]
    assert pending, "the kill came too late: nothing was in flight"

    # The procedure, as README.md gives it:
    # 1. release the stack's lock the killed update still holds;
    stack.run("cancel", "--yes")
    # 2. forget the creates that never finished (their sandboxes are not in state);
    stack.refresh("--clear-pending-creates")
    # 3. the orphans: sandboxes of the organization that no stack's state holds; delete them
    #    (made a moment ago, they hold nothing yet);
    known = {r["id"] for r in stack.resources(SANDBOX)}
    orphans = [i for i in sandboxes(client) if i not in known]
    assert orphans
    for orphan in orphans:
        client.delete_sandbox(orphan)
    # 4. and up, which creates what is missing.
    stack.up()

    ids = sorted(r["id"] for r in stack.resources(SANDBOX))
    assert len(ids) == 2 and not set(orphans) & set(ids)
    assert sandboxes(client) == ids
    assert not stack.export()["deployment"].get("pending_operations")
