"""Mount figures: the FUSE clients that could serve an object-storage mount, side by side,
each next to a direct boto3 GET of the same object from the same local S3 server.

The S3 server is moto in its own process on 127.0.0.1 (no traffic leaves the machine), so
every path shares the same server-side ceiling. Candidates: the rclone ``make rclone``
builds (``tools/rclone``) with its ``mount`` (bazil/fuse) and ``mount2`` (go-fuse) front-ends,
and Debian's rclone (1.60) the same two ways when it is installed (the figures before the
build). Each with the runner's read flags (``pulumi_leap0/runner/rclone.py``), and a few
variants of them. For each, in one mount:

- ``seq``: ``dd`` of the whole object to /dev/null inside a sandbox, timed inside it (the
  kernel's cache dropped first, so rclone fetches the object again), and the ratio to the
  direct ``get_object`` streamed in 1 MiB reads, the two alternated run by run. Target
  >= 90%.
- ``1MiB@40``: the time to open the object and read 1 MiB at 40 MiB (``dd skip=40``), next to
  a direct 1 MiB ranged GET at that offset, alternated: the first-byte latency of a read
  in a large object.
- ``cpu``: rclone's CPU time (user + system, all threads, from /proc/PID/stat) per MiB
  read over the ``seq`` runs.
- ``ra``: the kernel's read-ahead on the mount (``rclone.READ_AHEAD_KB``; 128 KiB is the
  kernel's default for a FUSE mount).
- laziness: what rclone read from its sockets (``rchar`` of /proc/PID/io) for an open and
  close alone, and for the 1 MiB read at 40 MiB: a client that fetched the object on open
  shows it there.

``ranged`` is boto3 making the GETs rclone makes (moto answers a range by copying the whole
object, so each range costs nearly a full GET: a cost of this test server, not of a mount).

Run as root, after ``make rclone``: ``python bench/bench_mounts.py [SIZE_MIB] [RUNS]``.
A few minutes.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import boto3

# The checkout's own package, whatever is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_leap0.runner import Runner, SandboxConfig, rclone
from pulumi_leap0.runner.network import EgressSettings
from pulumi_leap0.runner.types import MountConfig

TEMPLATE = "system/debian:bookworm"
KEY_ID, SECRET = "AKIABENCHMOUNTS", "bench-secret"
BUCKET, KEY = "bench", "data/large.bin"
MiB = 1024 * 1024
OFFSET_MIB = 40  # where the 1 MiB read starts: well inside the object, past any first chunk
DEBIAN = "/usr/bin/rclone"
_FLAGS = rclone.READ_FLAGS


def _with(flag: str, value: str) -> tuple[str, ...]:
    """The runner's read flags with ``flag`` set to ``value``."""
    flags = list(_FLAGS)
    flags[flags.index(flag) + 1] = value
    return tuple(flags)


_RA = rclone.READ_AHEAD_KB
# (label, binary, command, read flags, the kernel's read-ahead in KiB: None is its default);
# the built binary is filled in by main().
CANDIDATES: list[tuple[str, str, str, tuple[str, ...], int | None]] = [
    ("built", "", "mount2", _FLAGS, _RA),
    ("built", "", "mount", _FLAGS, None),
    ("built", "", "mount2", _FLAGS, None),
    ("debian", DEBIAN, "mount", _FLAGS, None),
    ("debian", DEBIAN, "mount2", _FLAGS, None),
    ("built", "", "mount", _FLAGS, _RA),
    ("built", "", "mount2", _FLAGS, 4096),
    # Without --no-checksum: rclone MD5s a whole sequential read (its default).
    ("built", "", "mount2", tuple(f for f in _FLAGS if f != "--no-checksum"), _RA),
    ("built", "", "mount2", _with("--buffer-size", "32M"), _RA),
    ("built", "", "mount2", _with("--vfs-read-chunk-size", "32M"), _RA),
]


def differences(flags: tuple[str, ...]) -> str:
    """How ``flags`` differ from the runner's, in words."""
    if "--no-checksum" not in flags:
        return "without --no-checksum"
    mine = dict(zip(_FLAGS[:-1:2], _FLAGS[1::2], strict=True))
    theirs = dict(zip(flags[:-1:2], flags[1::2], strict=True))
    return " ".join(f"{k} {v}" for k, v in theirs.items() if mine.get(k) != v)


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


def direct_range(client: object, offset: int, length: int) -> float:
    start = time.perf_counter()
    body = client.get_object(  # type: ignore[attr-defined]
        Bucket=BUCKET, Key=KEY, Range=f"bytes={offset}-{offset + length - 1}")["Body"]
    got = len(body.read())
    assert got == length, got
    return time.perf_counter() - start


def object_path(runner: Runner, sandbox_id: str) -> Path:
    return runner.runtime_dir / sandbox_id / "mnt" / "mnt-bench" / "large.bin"


def drop_cached(runner: Runner, sandbox_id: str) -> None:
    """Forget the object's pages in the kernel's cache, so each run reads through rclone."""
    fd = os.open(object_path(runner, sandbox_id), os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed_dd(runner: Runner, sandbox_id: str, args: str) -> tuple[int, float]:
    """``dd`` of the object inside the sandbox: bytes read and seconds, timed inside."""
    drop_cached(runner, sandbox_id)
    out = runner.exec(sandbox_id, f"s=$(date +%s%N); dd if=/mnt/bench/large.bin of=/dev/null "
                      f"bs=1M {args} 2>&1 | sed -n 's/ bytes.*//p'; e=$(date +%s%N); "
                      "echo $((e - s))", timeout=300)
    n, ns = out.stdout.split()
    return int(n), int(ns) / 1e9


def rclone_pid(runner: Runner, sandbox_id: str) -> int:
    """The rclone serving this sandbox's bench mount (its mount point is in its argv)."""
    marker = str(runner.runtime_dir / sandbox_id).encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[0].endswith(b"rclone") and any(marker in a for a in argv):
                return int(proc.name)
    raise RuntimeError("no rclone serves the bench mount")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def socket_bytes(pid: int) -> int:
    """Bytes rclone has read with read(2) and friends: its sockets, and /dev/fuse's small
    request headers."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar")


def settled(pid: int) -> int:
    """``socket_bytes`` once rclone has stopped reading (its buffer fills after the reader
    is done)."""
    last = socket_bytes(pid)
    while True:
        time.sleep(0.2)
        now = socket_bytes(pid)
        if now == last:
            return now
        last = now


def alternated(runs: int, first: Callable[[], float], second: Callable[[], float]
               ) -> tuple[list[float], list[float]]:
    """``runs`` timings of each of two calls, their order swapped every run."""
    a: list[float] = []
    b: list[float] = []
    for i in range(runs):
        if i % 2:
            b.append(second())
            a.append(first())
        else:
            a.append(first())
            b.append(second())
    return a, b


@dataclass
class Figures:
    """One candidate's samples, over both passes."""

    mount: list[float] = field(default_factory=list)  # seconds per whole object
    direct: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)  # seconds per 1 MiB read at OFFSET_MIB
    ranged: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # rclone's CPU seconds per MiB
    opened: list[int] = field(default_factory=list)  # bytes rclone read for an open
    fetched: list[int] = field(default_factory=list)  # ... and for the 1 MiB read

    def line(self, size: int) -> str:
        med = statistics.median
        return (f"seq {size / MiB / med(self.mount):6.1f} MiB/s "
                f"{med(self.direct) / med(self.mount):4.0%}  1MiB@{OFFSET_MIB} "
                f"{med(self.first) * 1000:4.0f} ms (direct {med(self.ranged) * 1000:3.0f})  "
                f"cpu {med(self.cpu) * 1000:4.1f} ms/MiB  open {max(self.opened) / 1024:3.0f} "
                f"KiB, 1MiB read {max(self.fetched) / MiB:4.1f} MiB")


def measure(runner: Runner, sandbox_id: str, client: object, size: int, runs: int) -> Figures:
    pid = rclone_pid(runner, sandbox_id)
    timed_dd(runner, sandbox_id, "")  # warm-up: rclone's first open, the connection
    cpu0 = cpu_seconds(pid)

    def through() -> float:
        n, seconds = timed_dd(runner, sandbox_id, "")
        assert n == size, n
        return seconds

    got = Figures()
    got.mount, got.direct = alternated(runs, through, lambda: direct_get(client, size))
    got.cpu = [(cpu_seconds(pid) - cpu0) / (runs * size / MiB)]

    def one_mib() -> float:
        n, seconds = timed_dd(runner, sandbox_id, f"skip={OFFSET_MIB} count=1")
        assert n == MiB, n
        return seconds

    got.first, got.ranged = alternated(runs, one_mib,
                                       lambda: direct_range(client, OFFSET_MIB * MiB, MiB))
    drop_cached(runner, sandbox_id)
    before = socket_bytes(pid)
    runner.exec(sandbox_id, ": < /mnt/bench/large.bin")
    got.opened = [settled(pid) - before]
    one_mib()
    got.fetched = [settled(pid) - before - got.opened[0]]
    return got


def main() -> None:
    size = int(sys.argv[1]) * MiB if len(sys.argv) > 1 else 64 * MiB
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    built = subprocess.run(["sh", str(rclone.BUILD_SCRIPT), "--where"], capture_output=True,
                           text=True, check=False)
    if built.returncode != 0:
        sys.exit("make rclone first")
    binary = built.stdout.split()[-1]
    candidates = [(label, path or binary, command, flags, ra)
                  for label, path, command, flags, ra in CANDIDATES
                  if os.access(path or binary, os.X_OK)]
    moto, endpoint = start_moto()
    runner = Runner(Path(tempfile.mkdtemp(prefix="leap0-bench-mounts-")) / "sandboxes",
                    egress=EgressSettings(allow_mount_endpoints=("127.0.0.1/32",)))
    sandbox_id = f"bench-{secrets.token_hex(4)}"
    defaults = (rclone.BINARY, rclone.MOUNT_COMMAND, rclone.READ_FLAGS, rclone.READ_AHEAD_KB)
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=KEY, Body=bytes(range(256)) * (size // 256))
        runner.start(SandboxConfig(id=sandbox_id, template=TEMPLATE, vcpu=2))
        direct_get(client, size)  # warm-up: connection pool, moto's first-object path
        direct = [direct_get(client, size) for _ in range(runs)]
        direct_mibs = size / MiB / statistics.median(direct)
        print(f"object {size // MiB} MiB, {runs} runs each, moto_server on 127.0.0.1, "
              f"load {os.getloadavg()[0]:.2f}")
        print(f"direct  median {statistics.median(direct):6.3f}s "
              f"{direct_mibs:7.1f} MiB/s  (boto3 get_object, 1 MiB reads)")
        first = _FLAGS[_FLAGS.index("--vfs-read-chunk-size") + 1]
        ranged = [direct_ranged(client, size, int(first.rstrip("M")) * MiB) for _ in range(runs)]
        rmibs = size / MiB / statistics.median(ranged)
        print(f"ranged  median {statistics.median(ranged):6.3f}s {rmibs:7.1f} MiB/s  "
              f"ratio {rmibs / direct_mibs:5.0%}  boto3, the ranges rclone asks for "
              f"({first}, doubling): moto's cost of ranges")
        totals: dict[int, Figures] = {}
        names: dict[int, str] = {}
        # Two passes, the second in reverse order, so no candidate always runs first.
        for rank, (label, path, command, flags, ra) in [
                *enumerate(candidates), *reversed(list(enumerate(candidates)))]:
            rclone.BINARY, rclone.MOUNT_COMMAND, rclone.READ_FLAGS = path, command, flags
            rclone.READ_AHEAD_KB = ra
            runner.mounts.attach(sandbox_id, MountConfig(
                id="mnt-bench", bucket=BUCKET, mount_path="/mnt/bench", endpoint=endpoint,
                prefix="data/", access_key_id=KEY_ID, secret_access_key=SECRET))
            figures = measure(runner, sandbox_id, client, size, runs)
            every = totals.setdefault(rank, Figures())
            for name in vars(every):
                getattr(every, name).extend(getattr(figures, name))
            shown = differences(flags)
            tag = " (the runner's)" if (path, command, flags, ra) == defaults else ""
            names[rank] = f"{label:6} {command:6} ra {ra or 128:4} KiB  {{}}  {shown}{tag}"
            print(f"[{rank}] " + names[rank].format(figures.line(size)), flush=True)
        print("both passes together (medians; laziness: the most fetched):")
        for rank, every in sorted(totals.items()):
            print(f"[{rank}] " + names[rank].format(every.line(size)))
        print("target: seq >= 90% of direct; the runner's choice is marked")
    finally:
        rclone.BINARY, rclone.MOUNT_COMMAND, rclone.READ_FLAGS, rclone.READ_AHEAD_KB = defaults
        runner.destroy(sandbox_id)
        moto.terminate()
        moto.wait(10)


if __name__ == "__main__":
    main()
