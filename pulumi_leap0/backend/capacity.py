"""How much memory this server promises sandboxes (``serve --max-memory-mib``).

A sandbox's ``memory`` is a cgroup limit: a promise the kernel keeps by killing. Promised
beyond the host's memory, it is kept by the OOM killer choosing among the sandboxes of
every organization, the backend and the host's own processes once the sandboxes use what
they were promised. So a sandbox is refused (503, the document's "no runner capacity")
when its memory does not fit beside that of every sandbox holding memory: every sandbox
but a stopped one (a paused sandbox keeps its pages; a stopped one has no processes). The
store checks it in the transaction that inserts or starts the sandbox, so concurrent
creates of many organizations cannot overcommit between them.

CPUs are not counted: a vcpu is a CPU quota, and CPU time promised twice is shared out by
the scheduler, which slows sandboxes down but never kills one.
"""

from __future__ import annotations

from pathlib import Path

#: Left to the backend, the egress filters, rclone and the host: a tenth of the memory,
#: and at least 1 GiB.
RESERVE_FRACTION = 10
RESERVE_MIN_MIB = 1024


def host_memory_mib(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"{meminfo} has no MemTotal")


def default_memory_mib() -> int:
    """The host's memory less the reserve."""
    total = host_memory_mib()
    return max(0, total - max(RESERVE_MIN_MIB, total // RESERVE_FRACTION))
