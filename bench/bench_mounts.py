"""Mount figures: sequential read throughput of a large object through an object-storage
mount, next to a direct boto3 GET of the same object from the same local S3 server.

The S3 server is moto in its own process on 127.0.0.1 (no traffic leaves the machine), so
both paths share the same server-side ceiling. Through the mount: ``dd`` of the object to
/dev/null inside a sandbox, timed inside it (a fresh open each run, so rclone fetches the
object again; without a VFS cache nothing is kept). Direct: ``get_object`` streamed in
1 MiB reads from the host. Medians over ``RUNS`` runs and the ratio mount/direct; target
>= 80%. A few rclone read-tuning variants (chunk size, buffer) are measured to justify the
defaults in ``pulumi_leap0/runner/mounts.py``.

Two lines say where the time goes: ``ranged`` is boto3 making the GETs rclone makes (moto
answers a range by copying the whole object, so each range costs nearly a full GET: a cost
of this test server, not of the mount), and ``host`` reads the same FUSE mount from the host
(rclone and FUSE without the sandbox: the sandbox's bind adds nothing measurable). rclone's
FUSE requests are 128 KiB each; on a 2-core machine shared with moto that round trip, not
the network, bounds the mount. rclone's hidden ``mount2`` (go-fuse) line shows what a faster
FUSE front-end gets from the same VFS.

Run as root: ``python bench/bench_mounts.py [SIZE_MIB] [RUNS]``. About a minute.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

# The checkout's own package, whatever is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_leap0.runner import Runner, SandboxConfig, mounts
from pulumi_leap0.runner.network import EgressSettings
from pulumi_leap0.runner.types import MountConfig

TEMPLATE = "system/debian:bookworm"
KEY_ID, SECRET = "AKIABENCHMOUNTS", "bench-secret"
BUCKET, KEY = "bench", "data/large.bin"
MiB = 1024 * 1024
VARIANTS: list[tuple[str, tuple[str, ...]]] = [
    # With rclone's per-read MD5 of a whole sequential read (its default): that hash was 40%
    # of rclone's CPU time here.
    ("mount", ("--vfs-read-chunk-size", "8M", "--buffer-size", "16M", "--max-read-ahead", "4M")),
    ("mount", ("--vfs-read-chunk-size", "8M", "--buffer-size", "16M", "--max-read-ahead", "4M",
               "--no-checksum")),
    ("mount", ("--vfs-read-chunk-size", "32M", "--buffer-size", "16M", "--max-read-ahead", "4M",
               "--no-checksum")),
    ("mount", ("--vfs-read-chunk-size", "128M", "--buffer-size", "32M",
               "--max-read-ahead", "4M", "--no-checksum")),
    ("mount2", ("--vfs-read-chunk-size", "128M", "--buffer-size", "16M",
                "--max-read-ahead", "4M", "--no-checksum")),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    exe = shutil.which("moto_server") or "moto_server"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, endpoint
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def direct_get(client: object, size: int) -> float:
    start = time.perf_counter()
    body = client.get_object(Bucket=BUCKET, Key=KEY)["Body"]  # type: ignore[attr-defined]
    got = 0
    while chunk := body.read(MiB):
        got += len(chunk)
    elapsed = time.perf_counter() - start
    assert got == size, got
    return elapsed


def direct_ranged(client: object, size: int, first_chunk: int) -> float:
    """The GETs rclone makes for one sequential read: a first range of ``first_chunk``
    bytes, each next one twice as long. moto copies the whole object to answer any range,
    so on this server every range costs about a whole GET: this line shows that part of the
    mount's cost, which a real S3 server does not charge."""
    start, offset, chunk = time.perf_counter(), 0, first_chunk
    got = 0
    while offset < size:
        end = min(offset + chunk, size) - 1
        body = client.get_object(  # type: ignore[attr-defined]
            Bucket=BUCKET, Key=KEY, Range=f"bytes={offset}-{end}")["Body"]
        while data := body.read(MiB):
            got += len(data)
        offset, chunk = end + 1, chunk * 2
    assert got == size, got
    return time.perf_counter() - start


def drop_cached(runner: Runner, sandbox_id: str) -> None:
    """Forget the object's pages in the kernel's cache, so each run reads through rclone."""
    path = runner.runtime_dir / sandbox_id / "mnt" / "mnt-bench" / "large.bin"
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def host_read(runner: Runner, sandbox_id: str, size: int) -> float:
    drop_cached(runner, sandbox_id)
    path = runner.runtime_dir / sandbox_id / "mnt" / "mnt-bench" / "large.bin"
    start = time.perf_counter()
    got = 0
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(MiB):
            got += len(chunk)
    assert got == size
    return time.perf_counter() - start


def mount_read(runner: Runner, sandbox_id: str, size: int) -> float:
    drop_cached(runner, sandbox_id)
    out = runner.exec(sandbox_id, "s=$(date +%s%N); dd if=/mnt/bench/large.bin of=/dev/null "
                      "bs=1M 2>&1 | sed -n 's/ bytes.*//p'; e=$(date +%s%N); echo $((e - s))",
                      timeout=300)
    n, ns = out.stdout.split()
    assert int(n) == size, out
    return int(ns) / 1e9


def main() -> None:
    size = int(sys.argv[1]) * MiB if len(sys.argv) > 1 else 64 * MiB
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    moto, endpoint = start_moto()
    runner = Runner(Path(tempfile.mkdtemp(prefix="leap0-bench-mounts-")) / "sandboxes",
                    egress=EgressSettings(allow_mount_endpoints=("127.0.0.1/32",)))
    sandbox_id = f"bench-{secrets.token_hex(4)}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=KEY, Body=bytes(range(256)) * (size // 256))
        runner.start(SandboxConfig(id=sandbox_id, template=TEMPLATE, vcpu=2))
        direct_get(client, size)  # warm-up: connection pool, moto's first-object path
        direct = [direct_get(client, size) for _ in range(runs)]
        direct_mibs = size / MiB / statistics.median(direct)
        print(f"object {size // MiB} MiB, {runs} runs each, moto_server on 127.0.0.1")
        print(f"direct  median {statistics.median(direct):6.3f}s "
              f"{direct_mibs:7.1f} MiB/s  (boto3 get_object, 1 MiB reads)")
        defaults = mounts.READ_FLAGS
        first = defaults[defaults.index("--vfs-read-chunk-size") + 1]
        ranged = [direct_ranged(client, size, int(first.rstrip("M")) * MiB) for _ in range(runs)]
        rmibs = size / MiB / statistics.median(ranged)
        print(f"ranged  median {statistics.median(ranged):6.3f}s {rmibs:7.1f} MiB/s  "
              f"ratio {rmibs / direct_mibs:5.0%}  boto3, the ranges rclone asks for "
              f"({first}, doubling): moto's cost of ranges")
        for command, flags in [("mount", defaults), *VARIANTS]:
            mounts.MOUNT_COMMAND, mounts.READ_FLAGS = command, flags
            runner.mount(sandbox_id, MountConfig(
                id="mnt-bench", bucket=BUCKET, mount_path="/mnt/bench", endpoint=endpoint,
                prefix="data/", access_key_id=KEY_ID, secret_access_key=SECRET))
            mount_read(runner, sandbox_id, size)  # warm-up
            through = [mount_read(runner, sandbox_id, size) for _ in range(runs)]
            mibs = size / MiB / statistics.median(through)
            if (command, flags) == ("mount", defaults):
                host = [host_read(runner, sandbox_id, size) for _ in range(runs)]
                hmibs = size / MiB / statistics.median(host)
                print(f"host    median {statistics.median(host):6.3f}s {hmibs:7.1f} MiB/s  "
                      f"ratio {hmibs / direct_mibs:5.0%}  same FUSE mount read on the host "
                      "(no sandbox): the FUSE/rclone ceiling")
            tag = "  (default)" if (command, flags) == ("mount", defaults) else ""
            print(f"mount   median {statistics.median(through):6.3f}s {mibs:7.1f} MiB/s  "
                  f"ratio {mibs / direct_mibs:5.0%}  rclone {command} {' '.join(flags)}{tag}")
        mounts.MOUNT_COMMAND = "mount"
        mounts.READ_FLAGS = defaults
        print("target: mount >= 80% of direct")
    finally:
        runner.destroy(sandbox_id)
        moto.terminate()
        moto.wait(10)


if __name__ == "__main__":
    main()
