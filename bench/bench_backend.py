"""Reference backend benchmarks: create-to-running, execute latency and GET throughput.

    python bench/bench_backend.py [--sandboxes 60] [--executes 200] [--clients 32] [--seconds 5]
                                  [--steps]

Starts a real ``leap0-backend serve`` on a free port with a throwaway data dir, then:

* create-to-running: POST a sandbox, wait until it reports ``running``, DELETE it; one at
  a time, so each figure is one sandbox's full boot. Median and p99. ``--steps`` runs the
  server with debug logging and prints the median of each step of the create path from its
  log (the lifecycle's insert, runner start and state change; the runner's own steps).
* execute: ``process/execute`` of ``true`` in one sandbox, one at a time: the whole path of
  a call (key, sandbox, the organization's share, the body, a worker thread, the runner's
  exec chain). Median and p99.
* GET throughput: ``--clients`` concurrent clients (one keep-alive connection each, a
  minimal HTTP/1.1 client: httpx costs several times the server's CPU per request) reading
  one sandbox's status for ``--seconds``, spread over ``--client-processes`` processes; they
  still share the machine's cores with the server.

Targets on a 2-core machine: median create-to-running < 100 ms, GET >= 3,000 req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pulumi_leap0.backend.store import DB_FILE_NAME, Store  # noqa: E402

TEMPLATE = "system/debian:bookworm"
TARGET_CREATE_MEDIAN_MS = 100.0
TARGET_GET_RPS = 3000.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_server(data_dir: Path, port: int, level: str = "warning",
                  root: Path = REPO_ROOT) -> subprocess.Popen[bytes]:
    log = (data_dir / "server.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "pulumi_leap0.backend.cli", "serve", "--port", str(port),
         "--data-dir", str(data_dir), "--log-level", level],
        cwd=root, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit((data_dir / "server.log").read_text())
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    raise SystemExit("server did not become ready")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def bench_create(base_url: str, key: str, count: int) -> list[float]:
    latencies: list[float] = []
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as http:
        for _ in range(count):
            started = time.perf_counter()
            created = http.post("/v1/sandbox/", json={"template_name": TEMPLATE})
            created.raise_for_status()
            sandbox = created.json()
            while sandbox["state"] != "running":
                sandbox = http.get(f"/v1/sandbox/{sandbox['id']}/").json()
            latencies.append((time.perf_counter() - started) * 1000)
            http.delete(f"/v1/sandbox/{sandbox['id']}/").raise_for_status()
    return latencies


_STEP_LINE = re.compile(r"leap0\.(?:runner|backend): (?:started|created) \S+: (.*)$")


def create_steps(log_text: str, skip: int = 0) -> dict[str, float]:
    """Median ms of each create step the server's debug log names (``--steps``)."""
    found: dict[str, list[float]] = {}
    for line in log_text.splitlines():
        matched = _STEP_LINE.search(line)
        if matched:
            for part in matched.group(1).split(", "):
                step, ms, _ = part.rsplit(" ", 2)
                found.setdefault(step, []).append(float(ms))
    return {step: statistics.median(v[skip:] or v) for step, v in found.items()}


def bench_execute(base_url: str, key: str, count: int) -> list[float]:
    latencies: list[float] = []
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as http:
        sandbox_id = http.post("/v1/sandbox/", json={"template_name": TEMPLATE}).json()["id"]
        try:
            for _ in range(count):
                started = time.perf_counter()
                http.post(f"/v1/sandbox/{sandbox_id}/process/execute",
                          json={"command": "true"}).raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            http.delete(f"/v1/sandbox/{sandbox_id}/")
    return latencies


async def _hammer(url: str, key: str, clients: int, seconds: float) -> tuple[int, int]:
    # A minimal HTTP/1.1 keep-alive client, not httpx: httpx spends several times the
    # server's CPU per request, and on a 2-core machine the clients then measure themselves.
    # Each response is still read whole (status line, headers, Content-Length body).
    parts = urlsplit(url)
    request = (f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
               f"Authorization: Bearer {key}\r\n\r\n").encode()
    done = errors = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done, errors
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while time.perf_counter() < deadline:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(_header(head, b"content-length"))
                await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 200 "):
                    done += 1
                else:
                    errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return done, errors


def _header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        field, _, value = line.partition(b":")
        if field.strip().lower() == name:
            return value.strip()
    raise ValueError(f"no {name.decode()} header in {head!r}")


def _hammer_process(url: str, key: str, clients: int, seconds: float, out: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    out.put(asyncio.run(_hammer(url, key, clients, seconds)))


def bench_get(
    base_url: str, key: str, clients: int, seconds: float, processes: int
) -> tuple[float, int]:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        sandbox_id = http.post("/v1/sandbox/", json={"template_name": TEMPLATE}).json()["id"]
    try:
        url = f"{base_url}/v1/sandbox/{sandbox_id}/"
        queue: Any = multiprocessing.Queue()
        shares = [clients // processes + (1 if n < clients % processes else 0)
                  for n in range(processes)]
        workers = [
            multiprocessing.Process(target=_hammer_process, args=(url, key, n, seconds, queue))
            for n in shares
        ]
        for worker in workers:
            worker.start()
        results = [queue.get(timeout=seconds + 120) for _ in workers]
        for worker in workers:
            worker.join()
        return sum(r[0] for r in results) / seconds, sum(r[1] for r in results)
    finally:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as http:
            http.delete(f"/v1/sandbox/{sandbox_id}/")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandboxes", type=int, default=60)
    parser.add_argument("--executes", type=int, default=200)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--steps", action="store_true",
                        help="print each create step's median (the server logs at debug)")
    parser.add_argument("--client-processes", type=int, default=2,
                        help="processes the clients are spread over")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="leap0-bench-") as tmp:
        data_dir = Path(tmp)
        # The sandboxes' own uids must traverse the data dir (bubblewrap binds from it).
        data_dir.chmod(0o711)
        port = _free_port()
        server = _start_server(data_dir, port, "debug" if args.steps else "warning")
        try:
            store = Store(data_dir / DB_FILE_NAME)
            key = store.create_api_key("bench")
            store.close()
            base_url = f"http://127.0.0.1:{port}"

            latencies = bench_create(base_url, key, args.sandboxes)
            median, p99 = statistics.median(latencies), _percentile(latencies, 0.99)
            print(f"create-to-running over {len(latencies)} sandboxes: "
                  f"median {median:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms "
                  f"(target median < {TARGET_CREATE_MEDIAN_MS:.0f} ms)")
            if args.steps:
                steps = create_steps((data_dir / "server.log").read_text(errors="replace"))
                print("  create steps, medians: "
                      + ", ".join(f"{k} {v:.1f} ms" for k, v in steps.items()))

            calls = bench_execute(base_url, key, args.executes)
            print(f"execute `true` over {len(calls)} calls: "
                  f"median {statistics.median(calls):.1f} ms, "
                  f"p99 {_percentile(calls, 0.99):.1f} ms")

            rate, errors = bench_get(
                base_url, key, args.clients, args.seconds, args.client_processes
            )
            print(f"GET /v1/sandbox/{{id}}/ with {args.clients} concurrent clients: "
                  f"{rate:,.0f} req/s, {errors} errors (target >= {TARGET_GET_RPS:,.0f} req/s; "
                  f"clients in {args.client_processes} processes; "
                  f"{os.cpu_count()} cores shared by server and clients)")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    ok = median < TARGET_CREATE_MEDIAN_MS and rate >= TARGET_GET_RPS and errors == 0
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
