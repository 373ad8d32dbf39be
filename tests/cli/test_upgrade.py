"""Done when 8: a new version of the provider (the package changed, the program kept)
previews as at most an update, and `up` keeps every output."""

from __future__ import annotations

import shutil
from pathlib import Path

from pulumi_leap0.client import Leap0Client
from tests.cli.conftest import SANDBOX, NewStack, sandboxes, steps
from tests.support import REPO_ROOT

PROGRAM = '''
box = leap0.Sandbox("box", template_name="system/debian:bookworm", memory=1024,
                    env_vars={"A": "1"},
                    network_policy=leap0.NetworkPolicyArgs(mode="custom",
                                                           allow_domains=["example.com"]))
pulumi.export("sandbox_id", box.id)
pulumi.export("created_at", box.created_at)
'''


def new_version(tmp_path: Path, mark: Path) -> Path:
    """A copy of the package that differs from this one, and says when its provider runs.
    A copy, never an edit of the checkout: other tests run from it."""
    root = tmp_path / "new-version"
    shutil.copytree(REPO_ROOT / "pulumi_leap0", root / "pulumi_leap0",
                    ignore=shutil.ignore_patterns("__pycache__", "backend", "runner"))
    provider = root / "pulumi_leap0" / "provider" / "sandbox.py"
    source = provider.read_text()
    assert "or CREATE_TIMEOUT_DEFAULT_S)" in source
    provider.write_text(
        source
        # A new version: changed code (a longer default wait) behind the same class name.
        .replace("or CREATE_TIMEOUT_DEFAULT_S)", "or CREATE_TIMEOUT_DEFAULT_S + 1)", 1)
        + f"\nopen({str(mark)!r}, 'a').write('new provider loaded\\n')\n"
    )
    return root


def test_a_new_provider_version_is_at_most_an_update_and_keeps_outputs(
    new_stack: NewStack, client: Leap0Client, tmp_path: Path
) -> None:
    mark = tmp_path / "loaded"
    stack = new_stack(PROGRAM)
    stack.up()
    before = stack.outputs()
    [state_before] = stack.resources(SANDBOX, show_secrets=True)

    stack.env["PYTHONPATH"] = str(new_version(tmp_path, mark))
    ops = {s["op"] for s in steps(stack.preview_json())}
    assert ops <= {"same", "update"}, ops
    assert mark.exists()  # the preview ran the new version's provider
    stack.up()

    assert stack.outputs() == before
    [state_after] = stack.resources(SANDBOX, show_secrets=True)
    assert state_after["id"] == state_before["id"]
    assert state_after["outputs"] == state_before["outputs"]
    assert sandboxes(client) == [before["sandbox_id"]]
