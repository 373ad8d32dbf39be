"""Issue #13 through the real CLI: a template, a sandbox of it, a snapshot of that sandbox
and a sandbox restored from the snapshot, chained in one program; a rename in place, a new
``uri`` that replaces, a snapshot deleted out of band, and destroy in dependency order."""

from __future__ import annotations

import json
import uuid

from pulumi_leap0 import spec
from pulumi_leap0.client import Leap0Client
from pulumi_leap0.pulumi_cli import Stack
from tests.cli.conftest import NewStack, sandboxes, steps
from tests.fixtures.registry import Registries

TEMPLATE = "pulumi-python:dynamic/leap0:Template"
SNAPSHOT = "pulumi-python:dynamic/leap0:Snapshot"


def chain(template_name: str, uri: str) -> str:
    return f'''
deny = leap0.NetworkPolicyArgs(mode="deny-all")
tpl = leap0.Template("tpl", name="{template_name}", uri="{uri}")
box = leap0.Sandbox("box", template_name=tpl.name, network_policy=deny)
snap = leap0.Snapshot("snap", sandbox_id=box.id, name="{template_name}-snap")
copy = leap0.Sandbox("copy", snapshot_name=snap.name, network_policy=deny)
pulumi.export("template_id", tpl.id)
pulumi.export("box", box.id)
pulumi.export("copy", copy.id)
'''


def op_order(stack: Stack, *args: str) -> list[tuple[str, str]]:
    """The engine's steps of an operation, in the order it began them (``--json`` events)."""
    done = stack.run(*args, "--yes", "--skip-preview", "--json", capture=True)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return [(e["resourcePreEvent"]["metadata"]["op"],
             e["resourcePreEvent"]["metadata"]["urn"].rsplit("::", 1)[-1])
            for e in events if "resourcePreEvent" in e]


def test_a_chained_program_comes_up_refreshes_and_goes_down_in_order(
        new_stack: NewStack, client: Leap0Client, registries: Registries) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    stack = new_stack(chain(name, registries.uri()))
    stack.up()
    outputs = stack.outputs()
    assert sandboxes(client) == sorted([outputs["box"], outputs["copy"]])
    assert [s.name for s in client.list_snapshots().items] == [f"{name}-snap"]
    # The restored sandbox runs on the template's image, as the image's user.
    run = client.execute(outputs["copy"], spec.ExecuteRequest(command="id -un; pwd"))
    assert run.stdout.splitlines() == ["app", "/app"], run

    done = stack.preview("--diff", "--expect-no-changes", check=False)
    assert done.returncode == 0, done.stdout + done.stderr

    # Destroy deletes each resource before what it depends on.
    order = [urn for op, urn in op_order(stack, "destroy") if op == "delete"]
    assert (order.index("copy") < order.index("snap") < order.index("box")
            < order.index("tpl")), order
    assert sandboxes(client) == [] and client.list_snapshots().items == []

    # Out of band, the snapshot goes: refresh drops it and keeps the rest. The restored
    # sandbox then depends on nothing that leads to the template, which destroy may delete
    # at the same time: the template's delete waits for the sandbox to go.
    stack.up()
    [snapshot] = client.list_snapshots().items
    client.delete_snapshot(snapshot.id)
    stack.refresh()
    assert stack.resources(SNAPSHOT) == []
    assert len(stack.resources(TEMPLATE)) == 1
    stack.destroy()
    assert sandboxes(client) == []


def test_a_rename_updates_in_place_and_a_new_uri_replaces(
        new_stack: NewStack, registries: Registries) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    program = f'tpl = leap0.Template("tpl", name="{name}", uri="{registries.uri()}")\n' \
              'pulumi.export("id", tpl.id)\npulumi.export("name", tpl.name)\n'
    stack = new_stack(program)
    stack.up()
    first = stack.outputs()["id"]
    main = stack.project_dir / "__main__.py"

    main.write_text(main.read_text().replace(f'name="{name}"', f'name="{name}-renamed"'))
    [step] = [s for s in steps(stack.preview_json(), TEMPLATE) if s["op"] != "same"]
    assert step["op"] == "update" and not step.get("replaceReasons"), step
    stack.up()
    assert stack.outputs() == {"id": first, "name": f"{name}-renamed"}

    main.write_text(main.read_text().replace(registries.uri(), registries.uri("v2")))
    [step] = [s for s in steps(stack.preview_json(), TEMPLATE) if s["op"] != "same"]
    assert step["op"] == "replace" and step["replaceReasons"] == ["uri"], step
    stack.up()
    assert stack.outputs()["id"] != first
    stack.destroy()
