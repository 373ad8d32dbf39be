"""Cheap cgroup moves on this host (``favor_dynamic_moves``), which ``cgroups.for_scope``
asks for once per runner: without them, each sandbox's first cgroup move waits for an RCU
grace period, the largest part of a create (docs/performance.md)."""

from __future__ import annotations

import logging
from pathlib import Path

from pulumi_leap0.runner import sysutil

log = logging.getLogger("leap0.runner")

#: A named cgroup v1 hierarchy without controllers, mounted with ``favordynmods``
#: (``favor_dynamic_moves``).
DYNMODS_MOUNT = Path("/run/leap0/cgroup-favordynmods")


def favor_dynamic_moves() -> bool:
    """Make joining a cgroup cheap on this host; says whether it is.

    A sandbox's first process joins its cgroups by a write to ``cgroup.procs``, and every
    such write takes the kernel's ``cgroup_threadgroup_rwsem`` for writing, which by default
    first waits for an RCU grace period: 6-15 ms here, the largest part of a create. While
    any cgroup hierarchy is mounted with ``favordynmods`` (Linux 6.0+), the kernel keeps
    that rwsem in its writer-favoured state: a move costs microseconds, and forks and exits
    on the host pay a little more, the fair trade on a host whose work is starting
    sandboxes. Remounting the host's own hierarchies is refused on cgroup v1, so the runner
    mounts a named hierarchy with no controllers (it limits nothing; every process is in its
    root, as in any hierarchy) once per host and leaves it mounted: other runners of the
    host rely on it too, and its unmount would hand them the grace period back. A kernel
    that refuses the option changes nothing but the speed."""
    if "favordynmods" in Path("/proc/self/mountinfo").read_text():
        return True
    try:
        DYNMODS_MOUNT.mkdir(parents=True, exist_ok=True, mode=0o700)
        sysutil.mount("cgroup", DYNMODS_MOUNT, "cgroup", 0,
                      "none,name=leap0-dynmods,favordynmods")
    except OSError as exc:
        log.debug("cgroup moves stay slow (favordynmods refused): %s", exc)
        return False
    return True
