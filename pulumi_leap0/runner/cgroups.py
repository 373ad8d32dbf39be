"""Resource limits and the freezer, on cgroup v1 and v2 behind one small class.

Layout: one cgroup per sandbox at ``leap0/<scope>/<sandbox id>``; the sandbox's long-lived
init lives in it directly and every ``exec`` gets a child ``x-<token>`` so a timeout can
kill exactly that call's process tree (however it forked or daemonized) while limits and
the freezer still apply to the whole sandbox. ``scope`` is a short hash of the runner's
state directory, so two runners on one host (a backend and a test run) never reap each
other's sandboxes.

v1 (this project's CI machines, hybrid mode): each controller is its own hierarchy and the
same relative path is created in each. v2: one tree; the controllers are delegated down to
the sandbox cgroup through ``cgroup.subtree_control``; the sandbox cgroup itself enables
none, so it may hold processes next to its children (the "no internal processes" rule
only applies to cgroups that distribute controllers).

Where the runner has no cgroups to use (not root, none mounted, none writable), ``for_scope``
answers a ``NoCgroups``: the same calls, doing nothing and finding nothing, so the runner
never asks whether cgroups exist (crun's do-nothing cgroup manager). Limits then go
unenforced, which the capability report says.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pulumi_leap0.runner.cgroupmoves import favor_dynamic_moves
from pulumi_leap0.runner.errors import RunnerError
from pulumi_leap0.runner.types import SandboxStats

log = logging.getLogger("leap0.runner")

CPU_PERIOD_US = 100_000
DEFAULT_PIDS_MAX = 512
V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "freezer")
V2_CONTROLLERS = ("cpu", "memory", "pids")
PARENT = "leap0"


@dataclass(frozen=True)
class Limits:
    vcpu: int
    memory_mib: int
    pids_max: int = DEFAULT_PIDS_MAX


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii", errors="replace")


def _write(path: Path, value: str) -> None:
    # Control files want the whole value in one write(), so no buffered file object.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _mountinfo_cgroups(text: str) -> tuple[dict[str, Path], Path | None]:
    """(v1 controller -> hierarchy mount point, v2 mount point) from mountinfo text."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(" "), right.split(" ")
        if len(fields) < 5 or len(tail) < 3:
            continue
        point, fstype, superopts = Path(fields[4]), tail[0], tail[2]
        if fstype == "cgroup2":
            v2 = point
        elif fstype == "cgroup":
            for opt in superopts.split(","):
                if opt in V1_CONTROLLERS:
                    v1[opt] = point
    return v1, v2


class Cgroups:
    """Sandbox cgroups on one host. ``version`` is 1 or 2; ``roots`` maps v1 controller
    names to their hierarchy roots, or ``{"unified": root}`` for v2 (see ``NoCgroups``)."""

    def __init__(self, version: int, roots: Mapping[str, Path]) -> None:
        if version not in (1, 2):
            raise ValueError("cgroup version must be 1 or 2")
        #: None only for ``NoCgroups``: no hierarchy at all.
        self.version: int | None = version
        self.roots = dict(roots)

    # --- Discovery ----------------------------------------------------------------------

    @classmethod
    def detect(cls, mountinfo: str | None = None) -> Cgroups | None:
        """The cgroup setup of this host, preferring v2 when it owns the memory controller."""
        if mountinfo is None:
            try:
                mountinfo = Path("/proc/self/mountinfo").read_text(errors="replace")
            except OSError:
                return None
        v1, v2 = _mountinfo_cgroups(mountinfo)
        if v2 is not None:
            try:
                available = _read(v2 / "cgroup.controllers").split()
            except OSError:
                available = []
            if "memory" in available:
                return cls(2, {"unified": v2})
        if "memory" in v1:
            return cls(1, v1)
        return None

    def controllers(self) -> dict[str, bool]:
        """Which controllers a sandbox would get limits from (present on this host)."""
        if self.version == 1:
            return {c: c in self.roots for c in V1_CONTROLLERS}
        root = self.roots["unified"]
        try:
            available = set(_read(root / "cgroup.controllers").split())
        except OSError:
            available = set()
        return {
            "cpu": "cpu" in available,
            "cpuacct": "cpu" in available,  # v2 accounts CPU in cpu.stat unconditionally
            "memory": "memory" in available,
            "pids": "pids" in available,
            "freezer": True,  # every non-root v2 cgroup has cgroup.freeze (Linux >= 5.2)
        }

    def _hierarchies(self) -> list[Path]:
        return sorted(set(self.roots.values()))

    def _dir(self, controller: str, rel: str) -> Path | None:
        if self.version == 2:
            return self.roots["unified"] / rel
        root = self.roots.get(controller)
        return None if root is None else root / rel

    def dirs(self, rel: str) -> list[Path]:
        return [root / rel for root in self._hierarchies()]

    def procs_files(self, rel: str) -> list[Path]:
        """Files a process writes its pid into to join ``rel`` in every hierarchy."""
        return [d / "cgroup.procs" for d in self.dirs(rel)]

    def exists(self, rel: str) -> bool:
        return any(d.is_dir() for d in self.dirs(rel))

    def children(self, rel: str) -> list[str]:
        names: set[str] = set()
        for d in self.dirs(rel):
            with contextlib.suppress(OSError):
                names.update(e.name for e in os.scandir(d) if e.is_dir(follow_symlinks=False))
        return sorted(names)

    # --- Creation -----------------------------------------------------------------------

    def create(self, rel: str, limits: Limits | None = None) -> None:
        """Make ``rel`` (and its parents) in every hierarchy and apply ``limits``."""
        if self.version == 2:
            self._delegate(rel)
        for d in self.dirs(rel):
            d.mkdir(parents=True, exist_ok=True)
        if limits is not None:
            self._apply(rel, limits)

    def _delegate(self, rel: str) -> None:
        root = self.roots["unified"]
        try:
            available = set(_read(root / "cgroup.controllers").split())
        except OSError:
            available = set()
        wanted = " ".join(f"+{c}" for c in V2_CONTROLLERS if c in available)
        parts = Path(rel).parts

        def distribute(group: Path) -> None:
            if not wanted:
                return
            have: set[str] = set()
            with contextlib.suppress(OSError):
                have = set(_read(group / "cgroup.subtree_control").split())
            if not {w[1:] for w in wanted.split()} <= have:
                _write(group / "cgroup.subtree_control", wanted)

        current = root
        # Every ancestor of the sandbox cgroup distributes the controllers, the sandbox
        # cgroup does not (it holds the init process).
        for part in parts[:-1]:
            distribute(current)
            current = current / part
            current.mkdir(exist_ok=True)
        distribute(current)

    def _apply(self, rel: str, limits: Limits) -> None:
        quota = limits.vcpu * CPU_PERIOD_US
        memory = limits.memory_mib * 1024 * 1024
        if self.version == 2:
            d = self.roots["unified"] / rel
            _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            _write(d / "memory.max", str(memory))
            # No swap beyond the memory limit: a sandbox may not buy time by swapping.
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            _write(d / "pids.max", str(limits.pids_max))
            return
        cpu = self._dir("cpu", rel)
        if cpu is not None:
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(quota))
        mem = self._dir("memory", rel)
        if mem is not None:
            # memsw must stay >= limit: lower memsw last when shrinking, raise it first
            # when growing; setting both to the same value in the right order covers both.
            memsw = mem / "memory.memsw.limit_in_bytes"
            try:
                _write(mem / "memory.limit_in_bytes", str(memory))
                if memsw.exists():
                    _write(memsw, str(memory))
            except OSError:
                if memsw.exists():
                    _write(memsw, str(memory))
                _write(mem / "memory.limit_in_bytes", str(memory))
            with contextlib.suppress(OSError):
                _write(mem / "memory.swappiness", "0")
        pids = self._dir("pids", rel)
        if pids is not None:
            _write(pids / "pids.max", str(limits.pids_max))

    # --- Processes ----------------------------------------------------------------------

    def pids(self, rel: str) -> set[int]:
        """Every process in ``rel`` and below (from one hierarchy: they all agree)."""
        base = self._dir("freezer", rel) or self.dirs(rel)[0]
        found: set[int] = set()
        for dirpath, _dirs, _files in os.walk(base):
            with contextlib.suppress(OSError):
                found.update(int(x) for x in _read(Path(dirpath) / "cgroup.procs").split())
        return found

    def populated(self, rel: str) -> bool:
        if self.version == 2:
            events = self.roots["unified"] / rel / "cgroup.events"
            with contextlib.suppress(OSError):
                for line in _read(events).splitlines():
                    if line.startswith("populated "):
                        return line.split()[1] == "1"
        return bool(self.pids(rel))

    def freeze(self, rel: str, *, timeout: float = 5.0) -> bool:
        """Stop every process of ``rel``; True when the kernel confirms it is frozen."""
        if self.version == 2:
            _write(self.roots["unified"] / rel / "cgroup.freeze", "1")
        else:
            d = self._dir("freezer", rel)
            if d is None:
                return False
            _write(d / "freezer.state", "FROZEN")
        deadline = time.monotonic() + timeout
        while not self.is_frozen(rel):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def freeze_or_thaw(self, rel: str) -> None:
        """Freeze ``rel``; one that does not freeze in time is thawed again, and it raises."""
        if not self.freeze(rel):
            self.thaw(rel)
            raise RunnerError("the sandbox did not freeze in time")

    def thaw(self, rel: str) -> None:
        if self.version == 2:
            _write(self.roots["unified"] / rel / "cgroup.freeze", "0")
            return
        d = self._dir("freezer", rel)
        if d is not None:
            _write(d / "freezer.state", "THAWED")

    def is_frozen(self, rel: str) -> bool:
        try:
            if self.version == 2:
                for line in _read(self.roots["unified"] / rel / "cgroup.events").splitlines():
                    if line.startswith("frozen "):
                        return line.split()[1] == "1"
                return False
            d = self._dir("freezer", rel)
            return d is not None and _read(d / "freezer.state").strip() == "FROZEN"
        except OSError:
            return False

    def kill(self, rel: str, *, timeout: float = 5.0) -> bool:
        """SIGKILL every process in ``rel`` and below; True once none is left.

        The freezer makes this reliable against fork bombs: frozen processes cannot fork
        between our read of the pid list and the signal, and SIGKILL lands on thaw.
        """
        if not self.exists(rel):
            return True
        kill_file = self.roots.get("unified", Path("/nonexistent")) / rel / "cgroup.kill"
        if self.version == 2 and kill_file.exists():
            _write(kill_file, "1")
        else:
            frozen = False
            with contextlib.suppress(OSError):
                frozen = self.freeze(rel, timeout=1.0)
            for _ in range(3):
                for pid in self.pids(rel):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                if frozen:
                    break
            with contextlib.suppress(OSError):
                self.thaw(rel)
        deadline = time.monotonic() + timeout
        while self.populated(rel):
            if time.monotonic() >= deadline:
                return False
            for pid in self.pids(rel):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.002)
        return True

    def kill_all_but(self, rel: str, spare: int) -> bool:
        """SIGKILL every process in ``rel`` and below except ``spare``, frozen first so none
        forks away meanwhile. False when there is no cgroup to find them by."""
        frozen = self.freeze(rel, timeout=1.0)
        for pid in self.pids(rel) - {spare}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if frozen:
            self.thaw(rel)
        return True

    def remove(self, rel: str, *, timeout: float = 2.0) -> None:
        """Remove ``rel`` and its children from every hierarchy (missing is fine)."""
        for base in self.dirs(rel):
            if not base.is_dir():
                continue
            for dirpath, _dirs, _files in os.walk(base, topdown=False):
                self._rmdir(Path(dirpath), timeout)

    def remove_if_empty(self, rel: str) -> bool:
        if self.populated(rel):
            return False
        try:
            self.remove(rel, timeout=0.0)
        except OSError:
            return False
        return True

    @staticmethod
    def _rmdir(path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError as exc:
                # EBUSY right after a kill: the last task is still exiting.
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    raise
                time.sleep(0.002)

    # --- Accounting ---------------------------------------------------------------------

    def stats(self, rel: str) -> SandboxStats:
        """What ``rel`` used so far; zeros for a cgroup that does not exist (``NoCgroups``)."""
        if not self.exists(rel):
            return SandboxStats(0, 0, 0)
        return SandboxStats(cpu_usage_ns=self.cpu_usage_ns(rel),
                            memory_bytes=self.memory_bytes(rel), pids=self.pids_current(rel))

    def cpu_usage_ns(self, rel: str) -> int:
        with contextlib.suppress(OSError, ValueError):
            if self.version == 2:
                for line in _read(self.roots["unified"] / rel / "cpu.stat").splitlines():
                    if line.startswith("usage_usec "):
                        return int(line.split()[1]) * 1000
                return 0
            d = self._dir("cpuacct", rel)
            if d is not None:
                return int(_read(d / "cpuacct.usage").strip())
        return 0

    def memory_bytes(self, rel: str) -> int:
        with contextlib.suppress(OSError, ValueError):
            if self.version == 2:
                return int(_read(self.roots["unified"] / rel / "memory.current").strip())
            d = self._dir("memory", rel)
            if d is not None:
                return int(_read(d / "memory.usage_in_bytes").strip())
        return 0

    def pids_current(self, rel: str) -> int:
        d = self._dir("pids", rel)
        with contextlib.suppress(OSError, ValueError):
            if d is not None:
                return int(_read(d / "pids.current").strip())
        return 0

    def probe_writable(self, rel: str) -> dict[str, bool]:
        """Which controllers this process can actually configure (creates and removes
        ``rel``). Used by the capability report; never raises."""
        result = {c: False for c in V1_CONTROLLERS}
        try:
            self.create(rel, None)
        except OSError:
            return result
        try:
            present = self.controllers()
            for c in V1_CONTROLLERS:
                d = self._dir(c if self.version == 1 else "unified", rel)
                if not present.get(c) or d is None:
                    continue
                probe = {
                    "cpu": "cpu.cfs_quota_us" if self.version == 1 else "cpu.max",
                    "cpuacct": "cpuacct.usage" if self.version == 1 else "cpu.stat",
                    "memory": "memory.limit_in_bytes" if self.version == 1 else "memory.max",
                    "pids": "pids.max",
                    "freezer": "freezer.state" if self.version == 1 else "cgroup.freeze",
                }[c]
                result[c] = os.access(d / probe, os.W_OK if c != "cpuacct" else os.R_OK)
        finally:
            with contextlib.suppress(OSError):
                self.remove(rel, timeout=0.5)
        return result


class NoCgroups(Cgroups):
    """No cgroups on this host for the runner: nothing is created, limited or found.

    ``create`` and ``remove`` do nothing, queries answer empty or zero, ``kill`` and
    ``kill_all_but`` answer False (the caller must reach the processes another way), and
    the freezer refuses with the reason, since pausing without it would be a lie.
    """

    def __init__(self) -> None:
        # No hierarchy: every method of Cgroups that walks ``roots`` finds nothing.
        self.version = None
        self.roots = {}

    def controllers(self) -> dict[str, bool]:
        return {c: False for c in V1_CONTROLLERS}

    def pids(self, rel: str) -> set[int]:
        return set()

    def freeze(self, rel: str, *, timeout: float = 5.0) -> bool:
        raise RunnerError("pause needs the cgroup freezer, which this host does not offer")

    def thaw(self, rel: str) -> None:
        raise RunnerError("resume needs the cgroup freezer, which this host does not offer")

    def kill(self, rel: str, *, timeout: float = 5.0) -> bool:
        return False

    def kill_all_but(self, rel: str, spare: int) -> bool:
        return False

    def probe_writable(self, rel: str) -> dict[str, bool]:
        return self.controllers()


def for_scope(rel: str) -> Cgroups:
    """This host's cgroups with a runner's scope ``rel`` made, or ``NoCgroups`` where the
    runner cannot use them (not root, none mounted, not writable)."""
    if os.geteuid() != 0:
        return NoCgroups()
    found = Cgroups.detect()
    if found is None:
        return NoCgroups()
    try:
        found.create(rel)
    except OSError:
        log.warning("cgroups present but not writable: sandboxes run without limits")
        return NoCgroups()
    favor_dynamic_moves()
    return found
