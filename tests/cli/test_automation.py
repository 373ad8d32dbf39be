"""Done when 9: the Automation API (an inline program, no project directory) runs up,
preview and destroy of a sandbox: how platforms embed Pulumi."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pulumi
import pytest
from pulumi import automation as auto

import pulumi_leap0 as leap0
from pulumi_leap0.client import Leap0Client
from pulumi_leap0.pulumi_cli import PASSPHRASE, REPO_ROOT
from tests.cli.conftest import sandboxes
from tests.fixtures.backend import BackendServer


def program() -> None:
    box = leap0.Sandbox("embedded", template_name="system/debian:bookworm",
                        network_policy=leap0.NetworkPolicyArgs(mode="deny-all"))
    pulumi.export("sandbox_id", box.id)


def test_inline_program_up_preview_destroy(
    pulumi_bin: Path, backend: BackendServer, api_key: str, client: Leap0Client, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # PulumiCommand(root=...) wants <root>/bin/pulumi; the cache holds the binaries flat.
    monkeypatch.setenv("PATH", f"{pulumi_bin}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "state").mkdir()
    env = {
        # The provider's credentials reach it through the environment, not config in argv.
        "LEAP0_API_KEY": api_key,
        "LEAP0_BASE_URL": backend.base_url,
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
        "PULUMI_PYTHON_CMD": sys.executable,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT),
                                                  os.environ.get("PYTHONPATH")) if p),
    }
    stack = auto.create_stack(
        "embedded", project_name="leap0-automation", program=program,
        opts=auto.LocalWorkspaceOptions(
            pulumi_home=str(tmp_path / "home"),
            pulumi_command=auto.PulumiCommand(skip_version_check=True),
            env_vars=env,
            project_settings=auto.ProjectSettings(
                name="leap0-automation", runtime="python",
                backend=auto.ProjectBackend(url=(tmp_path / "state").as_uri()),
            ),
        ),
    )
    up = stack.up()
    assert up.summary.result == "succeeded"
    sandbox_id = up.outputs["sandbox_id"].value
    assert sandboxes(client) == [sandbox_id]
    assert client.get_sandbox(sandbox_id).state.value == "running"

    preview = stack.preview()
    assert preview.change_summary == {"same": 2}

    destroy = stack.destroy()
    assert destroy.summary.result == "succeeded"
    assert sandboxes(client) == []
