"""The pull-request preview workflow passes actionlint (a Go module, from the Go proxy)."""

from __future__ import annotations

import shutil
import subprocess

from tests.support import REPO_ROOT, require

ACTIONLINT = "github.com/rhysd/actionlint/cmd/actionlint@v1.7.12"


def test_the_preview_workflow_passes_actionlint() -> None:
    require(shutil.which("go") is not None, "actionlint is built with Go, which is missing")
    done = subprocess.run(
        ["go", "run", ACTIONLINT, "-no-color", "examples/github-actions/preview.yml"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
