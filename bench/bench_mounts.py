"""Mount read throughput against a direct S3 GET of the same object, side by side.

A 64 MiB object in a local S3 server (moto); each round reads it once through the sandbox's
FUSE mount (``cat`` inside the sandbox) and once with boto3 on the host, alternating.
Target: the mount at least 80% of direct.

Run as root: python bench/bench_mounts.py [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_leap0.runner import MountConfig, Runner, SandboxConfig
from tests.fixtures.s3 import BUCKET, LARGE_KEY, LARGE_SIZE, s3

MIB = 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds

    store_fixture = s3.__wrapped__()  # type: ignore[attr-defined]
    store = next(store_fixture)
    runner = Runner(Path(tempfile.mkdtemp(prefix="leap0-bench-mounts-")))
    runner.start(SandboxConfig(
        id="sbx-bench-mounts", template="system/debian:bookworm", memory_mib=2048,
        mounts=(MountConfig(id="mnt-bench", bucket=BUCKET, mount_path="/models",
                            endpoint=store.endpoint, prefix="release/",
                            access_key_id=store.access_key_id,
                            secret_access_key=store.secret_access_key),),
    ))
    client = store.client()
    via_mount: list[float] = []
    direct: list[float] = []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            result = runner.exec("sbx-bench-mounts", "cat /models/large.bin | wc -c", timeout=120)
            via_mount.append(time.perf_counter() - started)
            assert result.stdout.strip() == str(LARGE_SIZE), result.stderr

            started = time.perf_counter()
            body = client.get_object(Bucket=BUCKET, Key=LARGE_KEY)["Body"].read()
            direct.append(time.perf_counter() - started)
            assert len(body) == LARGE_SIZE
    finally:
        runner.destroy("sbx-bench-mounts")
        next(store_fixture, None)

    mount_mib_s = LARGE_SIZE / MIB / statistics.median(via_mount)
    direct_mib_s = LARGE_SIZE / MIB / statistics.median(direct)
    print(f"sequential read of {LARGE_SIZE // MIB} MiB, median of {rounds} (alternating):")
    print(f"  through the mount   {mount_mib_s:8.1f} MiB/s")
    print(f"  direct S3 GET       {direct_mib_s:8.1f} MiB/s")
    print(f"  ratio               {mount_mib_s / direct_mib_s:8.2f}   (target >= 0.8)")


if __name__ == "__main__":
    main()
