"""The egress filter's process, host side: start it, tell whether it lives, stop it.

The filter itself is ``runner/egress/`` (``python -m pulumi_leap0.runner.egress``); this is
what the runner does with it. One filter per custom-policy sandbox, in its own session so
it outlives the backend like the sandbox does, found again through ``<state dir>/egress.json``
(pid and start time: a pid alone may have been reused since). It runs in the sandbox's
cgroup ``<sandbox>/egress`` (``cgroup``), so its CPU and new memory count against the
sandbox's limits and pausing the sandbox freezes it too. Its configuration, header values
included, goes to it on stdin, so no file holds them.

Filters are forked by one fork server per runner process (``egress --fork-server``, started
on first use, ending when this process does), which has done the imports once: a custom
sandbox's start then costs the same whatever was created just before it (a spare filter
refilled after each create used to spend ~0.4 CPU-s beside the next create).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import pulumi_leap0
from pulumi_leap0.runner import sysutil
from pulumi_leap0.runner.cgroups import Cgroups
from pulumi_leap0.runner.egress import READY, EgressConfig
from pulumi_leap0.runner.errors import RunnerError

#: Below every sandbox process (0): in an out-of-memory sandbox the filter is killed last.
FILTER_OOM_SCORE_ADJ = -900
#: How long the egress filter may take to listen before the start fails.
FILTER_START_TIMEOUT_S = 15.0
#: How long stopping a filter waits for it to be gone.
STOP_TIMEOUT_S = 10.0
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
    pid, stdin, stdout = _fork()
    _filters.add(pid)
    (state_dir / RECORD).write_text(json.dumps(
        {"pid": pid, "start_time": sysutil.process_start_time(pid)}))
    try:
        # The filter works for this sandbox only: its CPU and new memory count against the
        # sandbox's limits (a sandbox cannot make it burn the host's CPU). Where the host
        # lets us, the OOM killer takes the sandbox's own processes first, or one runaway
        # program would cut the whole sandbox off.
        for procs in cgroup:
            procs.write_text(str(pid))
        with contextlib.suppress(PermissionError):  # needs CAP_SYS_RESOURCE, not always ours
            Path(f"/proc/{pid}/oom_score_adj").write_text(str(FILTER_OOM_SCORE_ADJ))
        stdin.write(config.to_json().encode())
        stdin.close()
        ready, _, _ = select.select([stdout], [], [], FILTER_START_TIMEOUT_S)
        line = stdout.readline().decode().strip() if ready else ""
    except OSError:
        line = ""
    finally:
        with contextlib.suppress(OSError):  # what a dead filter did not read
            stdin.close()
    stdout.close()
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
    """Kill the sandbox's filter, if it has one, wait until it is gone and forget it
    (its fork server reaps it). Idempotent. Not for
    a frozen filter: it cannot die before its cgroup is thawed, and this would wait."""
    record_path = state_dir / RECORD if state_dir else None
    if record_path is None or not record_path.exists():
        return
    record = json.loads(record_path.read_text())
    pid, start_time = int(record["pid"]), record.get("start_time")
    if sysutil.process_start_time(pid) == start_time:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if pid in _filters:  # ours: gone for good before this returns (a frozen one on thaw)
        _filters.discard(pid)
        deadline, delay = time.monotonic() + STOP_TIMEOUT_S, 0.0005
        while (start_time is not None and sysutil.process_start_time(pid) == start_time
               and time.monotonic() < deadline):
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
    record_path.unlink(missing_ok=True)


# --- The fork server ------------------------------------------------------------------------

# The filters run the package this process runs (``-I`` alone would import the installed one).
_PACKAGE_ROOT = str(Path(pulumi_leap0.__file__).resolve().parent.parent)
_BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
         "from pulumi_leap0.runner.egress.__main__ import main; sys.exit(main())")

_server_lock = threading.Lock()
_server: tuple[subprocess.Popen[bytes], socket.socket] | None = None
# Filters forked for this process, so stopping one waits until it is gone.
_filters: set[int] = set()


def _fork() -> tuple[int, BinaryIO, BinaryIO]:
    """A new filter process, imports done, waiting for its config: its pid, its stdin and
    its stdout. The server is started (and waited for) if it is not running."""
    config_r, config_w = os.pipe()
    ready_r, ready_w = os.pipe()
    try:
        with _server_lock:
            reply = b""
            for _attempt in range(2):  # a server that died meanwhile is started again
                _process, control = _running_server()
                with contextlib.suppress(OSError):
                    socket.send_fds(control, [b"fork"], [config_r, ready_w])
                    reply = control.recv(4)
                if len(reply) == 4:
                    break
                _forget_server()
            else:
                raise RunnerError("the egress filter did not start: its fork server failed")
    except BaseException:
        _close(config_w, ready_r)
        raise
    finally:
        _close(config_r, ready_w)  # the filter's ends: it has its own copies
    pid: int = struct.unpack("!i", reply)[0]
    return pid, os.fdopen(config_w, "wb"), os.fdopen(ready_r, "rb")


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


def _running_server() -> tuple[subprocess.Popen[bytes], socket.socket]:
    global _server
    if _server is not None and _server[0].poll() is None:
        return _server
    _forget_server()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOT, _PACKAGE_ROOT, "--fork-server"],
            stdin=theirs.fileno(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd="/", env=sysutil.HOST_ENV, start_new_session=True,
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    ours.settimeout(FILTER_START_TIMEOUT_S)  # the first answer waits for its imports
    _server = (process, ours)
    return _server


def _forget_server() -> None:
    global _server
    if _server is None:
        return
    process, control = _server
    _server = None
    control.close()  # a live server ends on the closed socket; its filters stay
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
