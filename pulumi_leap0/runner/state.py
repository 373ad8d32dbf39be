"""What the runner remembers about each sandbox, and where it keeps it on the host.

``<root_dir>/<id>/`` is the runner's private directory for a sandbox: ``state.json`` (0600:
it holds env values) is how a restarted backend finds the sandbox's processes again (the
init's pid *and* start time, because a pid alone may name another process by then), beside
logs and the egress filter's record. ``<runtime_dir>/<id>/`` holds what bubblewrap binds
into the sandbox (``layer.py``, ``identity.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pulumi_leap0.runner import sysutil
from pulumi_leap0.runner.errors import RunnerError, SandboxNotFoundError, SandboxNotRunningError

# The id becomes a path, a cgroup name, a netns name and the hostname (<= 64).
SANDBOX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
STATE_FILE = "state.json"


def check_id(sandbox_id: str) -> None:
    if not SANDBOX_ID.match(sandbox_id):
        raise RunnerError("sandbox ids are 1-63 letters, digits, '.', '_' or '-'")


@dataclass
class SandboxState:
    """One sandbox as the runner knows it (``uid`` inside, ``host_uid`` outside)."""

    id: str
    template: str
    user: str
    uid: int
    host_uid: int
    host_gid: int
    workdir: str
    env: dict[str, str]
    init_pid: int = 0
    init_start: int = 0
    outer_pid: int = 0
    netns: str | None = None
    #: Records written before these existed read as a system template's: gid = uid.
    gid: int | None = None
    image: bool = False

    @property
    def group(self) -> int:
        return self.uid if self.gid is None else self.gid

    @property
    def running(self) -> bool:
        return self.init_pid > 0 and sysutil.process_start_time(self.init_pid) == self.init_start

    def forget_processes(self) -> None:
        self.init_pid = self.init_start = self.outer_pid = 0


class Records:
    """Each sandbox's two directories, and its record, cached: after a backend restart the
    disk is the truth (``forget`` drops what is cached)."""

    def __init__(self, root_dir: Path, runtime_dir: Path) -> None:
        self.root_dir, self.runtime_dir = root_dir, runtime_dir
        self._lock = threading.Lock()
        self._cache: dict[str, SandboxState] = {}

    def state_dir(self, sandbox_id: str) -> Path:
        return self.root_dir / sandbox_id

    def runtime(self, sandbox_id: str) -> Path:
        return self.runtime_dir / sandbox_id

    def get(self, sandbox_id: str) -> SandboxState | None:
        with self._lock:
            box = self._cache.get(sandbox_id)
        if box is not None:
            return box
        try:
            raw = json.loads((self.state_dir(sandbox_id) / STATE_FILE).read_text())
            box = SandboxState(**raw)
        except (OSError, ValueError, TypeError):
            return None
        with self._lock:
            self._cache[sandbox_id] = box
        return box

    def known(self, sandbox_id: str) -> SandboxState:
        """The sandbox's record, running or stopped; ``SandboxNotFoundError`` if it has none."""
        check_id(sandbox_id)
        box = self.get(sandbox_id)
        if box is None:
            raise SandboxNotFoundError("no such sandbox")
        return box

    def running(self, sandbox_id: str) -> SandboxState:
        """The record of a running sandbox, the one every call into a sandbox starts from."""
        box = self.known(sandbox_id)
        if not box.running:
            raise SandboxNotRunningError("the sandbox is not running")
        return box

    def put(self, box: SandboxState) -> None:
        """Atomically, so a crash mid-write leaves the previous record, never half of one."""
        path = self.state_dir(box.id) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(asdict(box)))
        os.replace(tmp, path)
        with self._lock:
            self._cache[box.id] = box

    def forget(self, sandbox_id: str) -> None:
        with self._lock:
            self._cache.pop(sandbox_id, None)

    def remove(self, sandbox_id: str) -> None:
        """Both directories, with whatever is still mounted below them, and the record."""
        for d in (self.runtime(sandbox_id), self.state_dir(sandbox_id)):
            for point in sysutil.mountpoints_under(d):
                sysutil.umount(point)
            shutil.rmtree(d, ignore_errors=True)
        self.forget(sandbox_id)

    def ids(self) -> list[str]:
        """Ids with a directory (running or stopped)."""
        found: set[str] = set()
        for d in {self.root_dir, self.runtime_dir}:
            with contextlib.suppress(OSError):
                found.update(e.name for e in os.scandir(d)
                             if e.is_dir(follow_symlinks=False) and SANDBOX_ID.match(e.name))
        return sorted(found)


class Steps:
    """Monotonic time spent in each step of one call, in ms, for the debug log (whose
    record carries them as ``steps``, which ``bench/`` reads)."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._last = time.monotonic()

    def __call__(self, step: str) -> None:
        now = time.monotonic()
        self.times[step] = self.times.get(step, 0.0) + (now - self._last) * 1000
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{step} {ms:.1f} ms" for step, ms in self.times.items())
