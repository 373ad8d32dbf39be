"""Snapshot and restore of a sandbox with 100 MiB written, beside ``tar`` of the same layer.

    sudo python bench/bench_snapshots.py [--rounds 7] [--mib 100]

Through the runner (what the API's snapshot and restore calls spend their time in), as root:
one sandbox with ``--mib`` MiB of random bytes in its home, then per round, in alternating
order so both see the same load:

* snapshot: ``Runner.snapshots.take`` (freeze, tar through a counting pipe, fsync, thaw) against
  the floor, plain ``tar --create`` of the same layer into a file;
* restore: ``Runner.start`` with the archive as its seed (a fresh sandbox: tmpfs, cgroup,
  network, the unpacker as the sandbox's uid, then the init) against the floor, a plain
  ``Runner.start`` plus ``tar --extract`` of the same archive into a tmpfs of the same size.

Prints the medians (ms) and the ratio to the floor.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pulumi_leap0.runner import (  # noqa: E402
    Runner,
    SandboxConfig,
    sysutil,
)
from pulumi_leap0.runner.snapshots import CAPTURED_PARTS  # noqa: E402

TEMPLATE = "system/debian:bookworm"


def _ms(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mib", type=int, default=100)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_snapshots needs root (namespaces, cgroups, tmpfs)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="leap0-bench-snap-"))
    work.chmod(0o711)
    runner = Runner(work / "sandboxes")
    store = work / "store"
    store.mkdir(mode=0o700)
    scratch = work / "scratch"
    scratch.mkdir()
    source = f"sbx-{secrets.token_hex(8)}"
    made: list[str] = [source]
    times: dict[str, list[float]] = {k: [] for k in ("snapshot", "tar -c", "restore",
                                                     "start + tar -x")}
    try:
        runner.start(SandboxConfig(id=source, template=TEMPLATE))
        runner.exec(source, f"head -c {args.mib}M /dev/urandom > ~/data", timeout=120)
        layer = runner.runtime_dir / source / "layer"
        archive = store / "floor.tar"

        def snapshot(n: int) -> None:
            dest = store / f"snap-{n}.tar"
            times["snapshot"].append(_ms(lambda: runner.snapshots.take(source, dest)))

        def tar_create(n: int) -> None:
            dest = store / f"tar-{n}.tar"
            times["tar -c"].append(_ms(lambda: subprocess.run(
                ["tar", "--create", f"--file={dest}", f"--directory={layer}", "--",
                 *CAPTURED_PARTS], check=True)))
            shutil.copyfile(dest, archive)

        def restore(n: int) -> None:
            sandbox_id = f"sbx-{secrets.token_hex(8)}"
            made.append(sandbox_id)
            seed = store / f"snap-{n}.tar"
            times["restore"].append(_ms(lambda: runner.start(
                SandboxConfig(id=sandbox_id, template=TEMPLATE, seed=seed))))
            runner.destroy(sandbox_id)

        def start_and_extract(n: int) -> None:
            sandbox_id = f"sbx-{secrets.token_hex(8)}"
            made.append(sandbox_id)
            target = scratch / str(n)
            target.mkdir()
            sysutil.mount("bench", target, "tmpfs", 0, "size=1024m")

            def floor() -> None:
                runner.start(SandboxConfig(id=sandbox_id, template=TEMPLATE))
                subprocess.run(["tar", "--extract", f"--file={archive}",
                                f"--directory={target}"], check=True)

            try:
                times["start + tar -x"].append(_ms(floor))
            finally:
                sysutil.umount(target)
                runner.destroy(sandbox_id)

        for n in range(args.rounds):
            pairs = [(snapshot, tar_create), (restore, start_and_extract)]
            for ours, theirs in pairs:
                # Capture before restore in every round: restore seeds from this round's.
                first, second = (ours, theirs) if n % 2 == 0 else (theirs, ours)
                first(n)
                second(n)
            for old in store.glob(f"*-{n}.tar"):
                old.unlink()
    finally:
        for sandbox_id in made:
            with contextlib.suppress(Exception):
                runner.destroy(sandbox_id)
        for point in sysutil.mountpoints_under(work):
            sysutil.umount(point)
        shutil.rmtree(work, ignore_errors=True)

    print(f"snapshot and restore of a sandbox with {args.mib} MiB written, "
          f"{args.rounds} rounds, medians in ms:")
    for ours, floor in (("snapshot", "tar -c"), ("restore", "start + tar -x")):
        a, b = statistics.median(times[ours]), statistics.median(times[floor])
        print(f"  {ours:<9} {a:8.1f}   {floor:<15} {b:8.1f}   ratio {a / b:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
