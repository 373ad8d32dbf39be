"""The wheel carries pulumi-plugin.json, so the Python language host, which asks for a
plugin named after every installed `pulumi-*` distribution without one, never looks for a
`leap0` resource plugin."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support import REPO_ROOT


def test_the_wheel_ships_pulumi_plugin_json_saying_no_resource_plugin(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources. With
    # build isolation: pyproject.toml asks for a newer setuptools than may be installed.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "pulumi_leap0", source / "pulumi_leap0",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
         "-w", str(tmp_path / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    [wheel] = (tmp_path / "dist").glob("pulumi_leap0-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert json.loads(archive.read("pulumi_leap0/pulumi-plugin.json")) == {"resource": False}
