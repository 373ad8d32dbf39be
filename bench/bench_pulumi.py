"""The real Pulumi CLI: what our provider adds to `pulumi preview` and `pulumi up`.

    python bench/bench_pulumi.py [--rounds 5] [--cold-build]

Against a local reference backend, two stacks side by side, measured in the same rounds
with their order alternated:

* ``leap0``: 3 ``leap0.Sandbox`` (deny-all network);
* ``noop``: 3 dynamic resources whose provider does nothing: Pulumi's own floor for a
  dynamic provider (a language host, a program, a ``pulumi.dynamic`` provider process).

Figures: the median ``pulumi preview`` of each stack unchanged and their ratio (target at
most 1.25), and the median ``pulumi up`` creating the 3 resources (each round destroys them
first, untimed) minus the no-op stack's: our whole cost of creating 3 sandboxes (target under
1 s). ``--cold-build`` also times ``make pulumi`` with empty Go caches and an empty binary
cache (downloads from the Go module proxy included) and reports the binaries' sizes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pulumi_leap0.demo import reference_backend  # noqa: E402
from pulumi_leap0.pulumi_cli import BUILD_SCRIPT, Stack, cli_dir, write_project  # noqa: E402

TARGET_PREVIEW_RATIO = 1.25
TARGET_UP_EXTRA_S = 1.0

LEAP0 = '''
import pulumi_leap0 as leap0

for i in range(3):
    leap0.Sandbox(f"box{i}", template_name="system/debian:bookworm",
                  network_policy=leap0.NetworkPolicyArgs(mode="deny-all"))
'''

NOOP = '''
import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider


class Noop(ResourceProvider):
    def create(self, props):
        return CreateResult(id_="noop", outs=props)

    def diff(self, _id, olds, news):
        return DiffResult(changes=False)


for i in range(3):
    Resource(Noop(), f"noop{i}", {"template_name": "system/debian:bookworm"})
'''


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


Step = Callable[[], object]


def side_by_side(rounds: int, a: Step, b: Step, reset_a: Step | None = None,
                 reset_b: Step | None = None) -> tuple[list[float], list[float]]:
    """Times of ``a`` and ``b`` over ``rounds``, a first in even rounds and b first in odd;
    each preceded, untimed, by its reset."""
    times_a: list[float] = []
    times_b: list[float] = []
    for i in range(rounds):
        order = [(a, reset_a, times_a), (b, reset_b, times_b)]
        for action, reset, times in order if i % 2 == 0 else order[::-1]:
            if reset:
                reset()
            times.append(timed(action))
    return times_a, times_b


def cold_build() -> None:
    with tempfile.TemporaryDirectory(prefix="pulumi-cold-") as tmp:
        env = {**os.environ, "GOCACHE": f"{tmp}/gocache", "GOMODCACHE": f"{tmp}/gomod",
               "PULUMI_LEAP0_CACHE": f"{tmp}/cache"}
        start = time.perf_counter()
        done = subprocess.run(["sh", str(BUILD_SCRIPT)], env=env, capture_output=True,
                              text=True, check=True)
        elapsed = time.perf_counter() - start
        out = Path(done.stdout.strip().splitlines()[-1])
        print(f"cold make pulumi: {elapsed:.0f} s (empty Go module and build caches; "
              f"load average {os.getloadavg()[0]:.1f})")
        for binary in sorted(out.iterdir()):
            print(f"  {binary.name}: {binary.stat().st_size / 1e6:.1f} MB")
        subprocess.run(["chmod", "-R", "u+w", tmp], check=False)  # the module cache is 0444


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cold-build", action="store_true")
    args = parser.parse_args()

    bin_dir = cli_dir()
    if bin_dir is None:
        raise SystemExit("the Pulumi CLI is not built: run `make pulumi`")
    with tempfile.TemporaryDirectory(prefix="bench-pulumi-") as tmp:
        root = Path(tmp)
        root.chmod(0o711)
        with reference_backend(root / "backend") as (url, api_key):
            leap0, noop = (
                Stack(bin_dir, write_project(root / name, program), root / f"{name}-stack")
                for name, program in (("leap0", LEAP0), ("noop", NOOP))
            )
            for stack in (leap0, noop):
                stack.init(config={"leap0:baseUrl": url}, secrets={"leap0:apiKey": api_key})
                stack.up()

            previews = side_by_side(args.rounds, lambda: leap0.preview("--expect-no-changes"),
                                    lambda: noop.preview("--expect-no-changes"))
            ups = side_by_side(args.rounds, leap0.up, noop.up, leap0.destroy, noop.destroy)
            leap0.destroy()
            noop.destroy()

    preview_leap0, preview_noop = (statistics.median(t) for t in previews)
    up_leap0, up_noop = (statistics.median(t) for t in ups)
    ratio = preview_leap0 / preview_noop
    extra = up_leap0 - up_noop
    print(f"pulumi preview, unchanged, 3 resources ({args.rounds} rounds, medians):")
    print(f"  leap0 {preview_leap0:.2f} s, no-op {preview_noop:.2f} s, ratio {ratio:.2f} "
          f"(target <= {TARGET_PREVIEW_RATIO})")
    print("pulumi up creating 3 resources:")
    print(f"  leap0 {up_leap0:.2f} s, no-op {up_noop:.2f} s, our cost {extra:.2f} s "
          f"(target < {TARGET_UP_EXTRA_S} s)")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.cold_build:
        cold_build()


if __name__ == "__main__":
    main()
