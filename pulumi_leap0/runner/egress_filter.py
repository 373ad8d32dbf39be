"""The egress filter's process, host side: start it, tell whether it lives, stop it.

The filter itself is ``runner/egress/`` (``python -m pulumi_leap0.runner.egress``); this is
what the runner does with it. One filter per custom-policy sandbox, in its own session so
it outlives the backend like the sandbox does, found again through ``<state dir>/egress.json``
(pid and start time: a pid alone may have been reused since). It runs in the sandbox's
cgroup ``<sandbox>/egress`` (``cgroup``), so its CPU and new memory count against the
sandbox's limits and pausing the sandbox freezes it too. Its configuration, header values
included, goes to it on stdin, so no file holds them.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from pulumi_leap0.runner import sysutil
from pulumi_leap0.runner.cgroups import Cgroups
from pulumi_leap0.runner.egress import READY, EgressConfig
from pulumi_leap0.runner.errors import RunnerError

#: Below every sandbox process (0): in an out-of-memory sandbox the filter is killed last.
FILTER_OOM_SCORE_ADJ = -900
#: How long the egress filter may take to listen before the start fails.
FILTER_START_TIMEOUT_S = 15.0
RECORD = "egress.json"


def cgroup(cgroups: Cgroups, sandbox_cgroup: str) -> list[Path]:
    """The files the filter writes its pid into: a child of the sandbox's cgroup, made."""
    rel = f"{sandbox_cgroup}/egress"
    cgroups.create(rel)
    return cgroups.procs_files(rel)


def start(config: EgressConfig, state_dir: Path, cgroup: Sequence[Path]) -> None:
    """Start a filter for ``config`` and return once it listens; ``RunnerError`` (with the
    last line it logged) and nothing left running when it does not."""
    log_path = state_dir / "egress.log"
    log_path.touch(mode=0o600)
    config = replace(config, log_path=str(log_path))
    process = _take()
    _filters[process.pid] = process
    assert process.stdin is not None and process.stdout is not None
    (state_dir / RECORD).write_text(json.dumps(
        {"pid": process.pid, "start_time": sysutil.process_start_time(process.pid)}))
    try:
        # The filter works for this sandbox only: its CPU and new memory count against the
        # sandbox's limits (a sandbox cannot make it burn the host's CPU). Where the host
        # lets us, the OOM killer takes the sandbox's own processes first, or one runaway
        # program would cut the whole sandbox off.
        for procs in cgroup:
            procs.write_text(str(process.pid))
        with contextlib.suppress(PermissionError):  # needs CAP_SYS_RESOURCE, not always ours
            Path(f"/proc/{process.pid}/oom_score_adj").write_text(str(FILTER_OOM_SCORE_ADJ))
        process.stdin.write(config.to_json().encode())
        process.stdin.close()
        ready, _, _ = select.select([process.stdout], [], [], FILTER_START_TIMEOUT_S)
        line = process.stdout.readline().decode().strip() if ready else ""
    except OSError:
        line = ""
    process.stdout.close()
    if line != READY:
        stop(state_dir)
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
        raise RunnerError("the egress filter did not start" + (f": {tail[0]}" if tail else ""))


def alive(state_dir: Path) -> bool:
    try:
        record = json.loads((state_dir / RECORD).read_text())
    except (OSError, ValueError):
        return False
    started: int | None = record.get("start_time")
    pid = int(record["pid"])
    if started is None or sysutil.process_start_time(pid) != started:
        return False
    return not _kill_pending(pid)


def _kill_pending(pid: int) -> bool:
    """Whether ``pid`` has a SIGKILL it has not acted on yet (killed while frozen)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    pending = 0
    for line in status.splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")):
            pending |= int(line.split()[1], 16)
    return bool(pending >> (signal.SIGKILL - 1) & 1)


def stop(state_dir: Path | None) -> None:
    """Kill the sandbox's filter, if it has one, reap it and forget it. Idempotent. Not for
    a frozen filter: it cannot die before its cgroup is thawed, and this would wait."""
    record_path = state_dir / RECORD if state_dir else None
    if record_path is None or not record_path.exists():
        return
    record = json.loads(record_path.read_text())
    pid, start_time = int(record["pid"]), record.get("start_time")
    if sysutil.process_start_time(pid) == start_time:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    child = _filters.pop(pid, None)
    if child is not None:  # reap it; a frozen one dies when its cgroup is thawed
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=10)
    record_path.unlink(missing_ok=True)


# --- Spare filters --------------------------------------------------------------------------

_spare_lock = threading.Lock()
_spare: subprocess.Popen[bytes] | None = None
# Filters started by this process, so they are reaped (not left as zombies) when stopped.
_filters: dict[int, subprocess.Popen[bytes]] = {}


def _take() -> subprocess.Popen[bytes]:
    """A filter process with its imports done, waiting for its config on stdin.

    Starting the interpreter and importing take ~0.4 s, most of a custom sandbox's start,
    so once a runner has used one filter it keeps the next one ready. An unused spare ends
    by itself when this process does (its stdin closes)."""
    global _spare
    with _spare_lock:
        process = _spare if _spare is not None and _spare.poll() is None else _spawn()
        _spare = _spawn()
    return process


def _spawn() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-I", "-m", "pulumi_leap0.runner.egress"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/",
        env=sysutil.HOST_ENV, start_new_session=True,  # outlives the backend, like the sandbox
    )
