"""Done when 3: a `memory` edit replaces, deleting first, at the organization's limit; a
mounts edit updates in place and keeps the mount ids."""

from __future__ import annotations

import json

from pulumi_leap0.client import Leap0Client
from pulumi_leap0.pulumi_cli import Stack
from tests.cli.conftest import NewStack, sandboxes, steps
from tests.fixtures.s3 import S3


def three(memory: int = 1024, mounts: str = "[]") -> str:
    return f'''
boxes = [
    leap0.Sandbox(f"box{{i}}", template_name="system/debian:bookworm",
                  memory={memory} if i == 0 else 1024, mounts={mounts} if i == 0 else [])
    for i in range(3)
]
pulumi.export("ids", [b.id for b in boxes])
'''


def mount(s3: S3, path: str) -> str:
    return f'leap0.MountArgs(bucket="{s3.bucket}", mount_path="{path}", endpoint="{s3.endpoint}")'


def events(stack: Stack, *args: str) -> list[dict[str, object]]:
    """`pulumi up --json`: the engine's events, one JSON object a line."""
    done = stack.run("up", "--yes", "--skip-preview", "--json", *args, capture=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_memory_edit_replaces_deleting_first_at_the_organization_limit(
    new_stack: NewStack, client: Leap0Client
) -> None:
    stack = new_stack(three())
    stack.up()
    before = stack.outputs()["ids"]
    assert len(sandboxes(client)) == 3  # the organization's limit: no room beside them

    (stack.project_dir / "__main__.py").write_text(
        (stack.project_dir / "__main__.py").read_text().replace("memory=1024 if", "memory=2048 if")
    )
    [step] = [s for s in steps(stack.preview_json()) if s["op"] != "same"]
    assert step["op"] == "replace"
    assert step["urn"].endswith("::box0")
    assert step["replaceReasons"] == ["memory"]
    # The dynamic provider reports no per-property diff: the text diff shows the change.
    resources = stack.preview("--diff").stdout.split("--outputs:--")[0]
    changed = [line.split(":")[0].strip() for line in resources.splitlines()
               if line.lstrip().startswith(("~ ", "+ ", "- "))]
    assert changed == ["~ memory"], resources

    ops = [
        (e["resourcePreEvent"]["metadata"]["op"], e["resourcePreEvent"]["metadata"]["urn"])
        for e in events(stack) if "resourcePreEvent" in e
    ]
    box0 = [op for op, urn in ops if urn.endswith("::box0")]
    assert box0.index("delete-replaced") < box0.index("create-replacement"), box0
    after = stack.outputs()["ids"]
    assert after[1:] == before[1:] and after[0] != before[0]
    assert client.get_sandbox(after[0]).memory == 2048
    assert sandboxes(client) == sorted(after)


def test_mounts_edit_updates_in_place_and_keeps_mount_ids(
    new_stack: NewStack, client: Leap0Client, s3: S3
) -> None:
    stack = new_stack(three(mounts=f"[{mount(s3, '/a')}]"))
    stack.up()
    [sandbox_id, *_] = stack.outputs()["ids"]
    [kept] = client.get_sandbox(sandbox_id).mounts

    (stack.project_dir / "__main__.py").write_text(
        (stack.project_dir / "__main__.py").read_text().replace(
            mount(s3, "/a"), f"{mount(s3, '/a')}, {mount(s3, '/b')}"
        )
    )
    [step] = [s for s in steps(stack.preview_json()) if s["op"] != "same"]
    assert step["op"] == "update", step
    assert not step.get("replaceReasons")
    stack.up()

    assert stack.outputs()["ids"][0] == sandbox_id
    mounts = {m.mount_path: m.id for m in client.get_sandbox(sandbox_id).mounts}
    assert set(mounts) == {"/a", "/b"}
    assert mounts["/a"] == kept.id
