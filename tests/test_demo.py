"""``make demo`` works: the quickstart's sandbox is created, used and deleted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import REPO_ROOT

# No pulumi CLI on it and none built, so the demo takes its fallback, the engine-protocol
# path (tests/cli/test_demo_cli.py runs it through the CLI).
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_the_demo_runs_end_to_end(tmp_path: Path) -> None:
    tmp_path.chmod(0o711)
    done = subprocess.run(
        [sys.executable, "-m", "pulumi_leap0.demo"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PATH": SYSTEM_PATH, "PYTHONPATH": str(REPO_ROOT),
             "PULUMI_LEAP0_CLI_DIR": str(tmp_path / "no-cli")},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "hello from a leap0 sandbox" in out
    assert "replaces=['memory']" in out
    assert out.rstrip().endswith("demo complete")
    log = (tmp_path / ".demo" / "backend" / "backend.log").read_text()
    assert "Traceback" not in log
