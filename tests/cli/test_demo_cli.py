"""``make demo`` through the real CLI: up, a command inside, an edit previewed, up, destroy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import REPO_ROOT


def test_the_demo_runs_through_the_cli(pulumi_bin: Path, tmp_path: Path) -> None:
    tmp_path.chmod(0o711)
    done = subprocess.run(
        [sys.executable, "-m", "pulumi_leap0.demo"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "PULUMI_LEAP0_CLI_DIR": str(pulumi_bin)},
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "$ pulumi up --yes" in out and "+ 2 created" in out
    assert "hello from a leap0 sandbox" in out
    assert "~ memory        : 1024 => 2048" in out
    assert "+-1 replaced" in out
    assert "- 2 deleted" in out
    assert out.rstrip().endswith("demo complete")
    assert "hello from a leap0 sandbox" not in out.split("$ pulumi up --yes")[1].split("==>")[0]
