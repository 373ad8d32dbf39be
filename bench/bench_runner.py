"""Runner figures: start latency and the host-side memory cost of an idle sandbox.

Start latency is measured from ``Runner.start`` being called to the first command's output
having come back (``start`` + ``exec("true")``), and separately ``start`` alone, over
``N`` sandboxes started one after another, with the median of each of its steps (the
runner's debug log, ``state.Steps``). Target: start median < 50 ms.

Host-side memory per idle sandbox: what the host spends beyond the sandbox's own
processes. The sandbox's own processes are charged to its cgroup (``memory`` in the
sandbox cgroup). Everything else (the outer bubblewrap monitor, kernel objects for its
namespaces, its netns, mounts, page tables not charged) shows up in the host's used memory
but not in the sandbox cgroup. So: (MemAvailable drop while N idle sandboxes exist -
sum of their cgroup charges) / N. The figure is noisy (page cache, other processes);
it is an estimate, printed with the parts. Target: < 10 MiB per idle sandbox.

What a host uid per sandbox and the seccomp filter cost (issue #12): ``start`` and
``exec("true")`` medians, side by side, in three settings run round-robin so that the
machine's load falls on all alike: one shared uid without the filter (as before), a uid
of its own without the filter, and both (as now). Also the one-off and per-start parts:
compiling the filter (once per process), claiming and releasing a uid.

Run as root: ``python3 bench/bench_runner.py [N [ROUNDS]]``. Takes well under two minutes.

Another version of the runner beside this one: ``python3 bench/bench_runner.py --against
TREE [ROUNDS]``, where TREE is a checkout of it (``git archive main | tar -x -C TREE``).
One worker process per tree, each with its own Runner, take turns, the first of each round
alternating; each turn is ``start``, ``exec("true")``, an exec with 100 variables of 1 KiB
(what the environment's path costs) and ``destroy``. Medians, and this tree's over TREE's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_leap0.runner import Runner, SandboxConfig, identity, seccomp
from tests.security.legacy import SharedUids

TEMPLATE = "system/debian:bookworm"


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def filtered(on: bool) -> Iterator[None]:
    """The exec side of the filter off (``seccomp.popen`` then starts chains directly)."""
    saved = seccomp.AVAILABLE
    seccomp.AVAILABLE = saved and on
    try:
        yield
    finally:
        seccomp.AVAILABLE = saved


class StepTimes(logging.Handler):
    """The per-step times ``Runner.start`` logs at debug level (``state.Steps``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.steps: dict[str, list[float]] = {}
        log = logging.getLogger("leap0.runner")
        log.setLevel(logging.DEBUG)
        log.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        for step, ms in getattr(record, "steps", {}).items():
            self.steps.setdefault(step, []).append(ms)

    def medians(self) -> str:
        return ", ".join(f"{step} {statistics.median(v):.2f}" for step, v in self.steps.items())


def identity_costs(tmp: Path, rounds: int) -> None:
    seccomp.program.cache_clear()
    seccomp._filter.cache_clear()
    t0 = time.perf_counter()
    program = seccomp.program()
    compile_ms = (time.perf_counter() - t0) * 1000
    # Beside the real one (/run/leap0/uids), with a range of its own.
    pool = identity.UidPool(Path(tempfile.mkdtemp(dir="/run")), first=2_100_000_000,
                            count=100_000)
    claims: list[float] = []
    for i in range(200):
        t0 = time.perf_counter()
        pool.claim(f"bench/{i}")
        pool.release(f"bench/{i}")
        claims.append((time.perf_counter() - t0) * 1000)
    shutil.rmtree(pool.directory)
    print(f"seccomp filter: {len(program) // 8} BPF instructions, compiled once in "
          f"{compile_ms:.1f} ms; uid claim + release: median {statistics.median(claims):.2f} ms")

    settings = {  # name: (uid pool, filter on)
        "shared uid, no seccomp (before)": (SharedUids(tmp / "unused"), False),
        "own uid, no seccomp": (None, False),
        "own uid + seccomp (now)": (None, True),
    }
    runners = {name: Runner(tmp / f"cost-{k}", uids=uids)
               for k, (name, (uids, _)) in enumerate(settings.items())}
    starts: dict[str, list[float]] = {name: [] for name in settings}
    execs: dict[str, list[float]] = {name: [] for name in settings}
    names = list(settings)
    for i in range(rounds):
        for name in names[i % 3:] + names[:i % 3]:
            runner, on = runners[name], settings[name][1]
            if not on:
                runner._seccomp = None  # the init side of the filter off
            sandbox_id = f"sbx-cost-{secrets.token_hex(6)}"
            with filtered(on):
                t0 = time.perf_counter()
                runner.start(SandboxConfig(id=sandbox_id, template=TEMPLATE, memory_mib=512))
                t1 = time.perf_counter()
                runner.exec(sandbox_id, "true")
                t2 = time.perf_counter()
            runner.destroy(sandbox_id)
            starts[name].append((t1 - t0) * 1000)
            execs[name].append((t2 - t1) * 1000)
    print(f"start() and exec('true') medians over {rounds} rounds, round-robin:")
    for name in names:
        print(f"  {name:32s} start {statistics.median(starts[name]):6.1f} ms   "
              f"exec {statistics.median(execs[name]):6.1f} ms")


# One worker: a Runner of the tree on sys.path[0], one measured turn per line on stdin.
_WORKER = r'''
import json, secrets, sys, tempfile, time
from pathlib import Path
from pulumi_leap0.runner import Runner, SandboxConfig
runner = Runner(Path(tempfile.mkdtemp(prefix="leap0-bench-", dir=sys.argv[1])) / "sandboxes")
env = {f"V{i}": "x" * 1024 for i in range(100)}
for _ in sys.stdin:
    sandbox_id = f"sbx-vs-{secrets.token_hex(6)}"
    t0 = time.perf_counter()
    runner.start(SandboxConfig(id=sandbox_id, template=sys.argv[2], memory_mib=512))
    t1 = time.perf_counter()
    assert runner.exec(sandbox_id, "true").exit_code == 0
    t2 = time.perf_counter()
    assert runner.exec(sandbox_id, 'test "$V99" = "$V0"', env=env).exit_code == 0
    t3 = time.perf_counter()
    runner.destroy(sandbox_id)
    print(json.dumps({"start": t1 - t0, "exec": t2 - t1, "exec+env": t3 - t2}), flush=True)
'''


def against(other: Path, rounds: int) -> None:
    trees = {"this tree": Path(__file__).resolve().parent.parent, "TREE": other.resolve()}
    with tempfile.TemporaryDirectory(prefix="leap0-bench-", dir="/tmp") as tmp:
        Path(tmp).chmod(0o711)
        workers = {name: subprocess.Popen([sys.executable, "-c", _WORKER, tmp, TEMPLATE],
                                          cwd=tree, text=True, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE,
                                          env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"})
                   for name, tree in trees.items()}
        figures: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
        names = list(trees)
        try:
            for i in range(rounds + 1):  # the first round warms up both
                for name in names[i % 2:] + names[:i % 2]:
                    worker = workers[name]
                    assert worker.stdin is not None and worker.stdout is not None
                    worker.stdin.write("go\n")
                    worker.stdin.flush()
                    line = worker.stdout.readline()
                    if not line:
                        raise RuntimeError(f"the worker of {name} died")
                    if i:
                        for key, value in json.loads(line).items():
                            figures[name].setdefault(key, []).append(value * 1000)
        finally:
            for worker in workers.values():
                assert worker.stdin is not None
                worker.stdin.close()
                worker.wait(timeout=60)
    print(f"this tree ({trees['this tree']}) against TREE ({trees['TREE']}), "
          f"{rounds} alternated rounds, medians:")
    for key in figures["TREE"]:
        ours, theirs = (statistics.median(figures[n][key]) for n in ("this tree", "TREE"))
        print(f"  {key:9s} TREE {theirs:7.2f} ms   this tree {ours:7.2f} ms   "
              f"ratio {ours / theirs:5.2f}")


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--against":
        against(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 40)
        return 0
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    with tempfile.TemporaryDirectory(prefix="leap0-bench-") as tmp:
        runner = Runner(Path(tmp) / "sandboxes")
        caps = runner.capabilities()
        if not (caps.bubblewrap and caps.namespaces):
            print("bench_runner: bubblewrap with namespaces is required:", caps.missing)
            return 1
        # Warm up caches (binaries, dentries) so the figures are of steady state.
        warm = f"sbx-warm-{secrets.token_hex(4)}"
        runner.start(SandboxConfig(id=warm, template=TEMPLATE))
        runner.exec(warm, "true")
        runner.destroy(warm)
        identity_costs(Path(tmp), int(sys.argv[2]) if len(sys.argv) > 2 else max(10, n // 2))

        time.sleep(0.5)
        steps = StepTimes()
        avail_before = mem_available_kib()
        ids: list[str] = []
        start_only: list[float] = []
        to_first: list[float] = []
        try:
            for _ in range(n):
                sandbox_id = f"sbx-bench-{secrets.token_hex(6)}"
                ids.append(sandbox_id)
                t0 = time.perf_counter()
                runner.start(SandboxConfig(id=sandbox_id, template=TEMPLATE, memory_mib=512))
                t1 = time.perf_counter()
                result = runner.exec(sandbox_id, "echo first")
                t2 = time.perf_counter()
                assert result.stdout == "first\n", result
                start_only.append((t1 - t0) * 1000)
                to_first.append((t2 - t0) * 1000)
            time.sleep(1.0)  # let the idle sandboxes settle
            avail_after = mem_available_kib()
            charged = sum(runner.stats(i).memory_bytes for i in ids) / 1024
        finally:
            t0 = time.perf_counter()
            for sandbox_id in ids:
                runner.destroy(sandbox_id)
            destroy_ms = (time.perf_counter() - t0) * 1000 / max(1, len(ids))

        used = avail_before - avail_after
        host_side = (used - charged) / n / 1024
        print(f"sandboxes: {n} (cgroup v{caps.cgroup_version}, bwrap {caps.bubblewrap_version})")
        print(f"start():               median {statistics.median(start_only):6.1f} ms   "
              f"p99 {pct(start_only, 0.99):6.1f} ms")
        print(f"start -> first output: median {statistics.median(to_first):6.1f} ms   "
              f"p99 {pct(to_first, 0.99):6.1f} ms")
        print(f"  its steps, medians (ms): {steps.medians()}")
        print(f"destroy():             mean   {destroy_ms:6.1f} ms")
        print(f"memory: host used {used / 1024:.1f} MiB for {n} idle sandboxes, "
              f"{charged / 1024:.1f} MiB charged to their cgroups")
        print(f"host-side memory per idle sandbox (beyond its own processes): "
              f"{host_side:.2f} MiB")
        print(f"per idle sandbox in total (incl. its processes): {used / n / 1024:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
