"""``leap0-backend`` on the command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from tests.fixtures.backend import BackendServer
from tests.support import REPO_ROOT


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pulumi_leap0.backend.cli", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )


def test_api_key_create_prints_one_key_that_works(backend: BackendServer) -> None:
    made = _cli("api-key", "create", "--org", "cli-org", "--data-dir", str(backend.data_dir))
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    assert len(lines) == 1 and lines[0].strip() == lines[0] and len(lines[0]) > 30
    answer = httpx.get(
        f"{backend.base_url}/v1/sandboxes", headers={"Authorization": f"Bearer {lines[0]}"}
    )
    assert answer.status_code == 200
    # A second key for the same org sees the same sandboxes; the keys differ.
    again = _cli("api-key", "create", "--org", "cli-org", "--data-dir", str(backend.data_dir))
    assert again.stdout.strip() != lines[0]


def test_api_key_create_needs_an_org(tmp_path: Path) -> None:
    assert _cli("api-key", "create", "--data-dir", str(tmp_path)).returncode != 0
    assert _cli("api-key", "create", "--org", " ", "--data-dir", str(tmp_path)).returncode != 0


def test_data_dir_is_private(backend: BackendServer) -> None:
    database = backend.data_dir / "leap0.db"
    assert database.stat().st_mode & 0o077 == 0


def test_doctor_prints_the_capability_report(tmp_path: Path) -> None:
    report = _cli("doctor", "--data-dir", str(tmp_path))
    assert report.returncode == 0, report.stderr
    caps = json.loads(report.stdout)
    # Whether snapshots could hold processes, and why: what ``criu check`` says here.
    criu = subprocess.run(["criu", "check"], capture_output=True, check=False) if shutil.which(
        "criu") else None
    assert caps["snapshot_processes"] is False  # files and configuration only, for now
    if criu is None:
        assert "not installed" in caps["snapshot_processes_detail"]
    elif criu.returncode != 0:
        assert caps["snapshot_processes_detail"].startswith("criu check fails on this kernel")
    else:
        assert "does not capture processes yet" in caps["snapshot_processes_detail"]


def test_healthz_carries_the_capability_report(backend: BackendServer) -> None:
    health = httpx.get(f"{backend.base_url}/healthz").json()
    assert health["status"] == "ok"
    assert isinstance(health["capabilities"], dict)
