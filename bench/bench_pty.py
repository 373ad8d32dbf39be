"""PTY echo latency, and preview-URL throughput against a direct connection.

    python bench/bench_pty.py [--keys 200] [--rounds 6] [--seconds 3] [--clients 8]

Run as root (sandboxes). Starts a real ``leap0-backend serve`` on a free port with a
throwaway data dir and one ``deny-all`` sandbox, then:

* PTY echo: a session's WebSocket (the SDK's client library, ``websockets``), one key at a
  time into bash's prompt; the time from sending the key to its echo arriving. Median, p99.
* Preview throughput: a keep-alive HTTP/1.1 server in the sandbox (Python's
  ``ThreadingHTTPServer``, ~100-byte answers), hit by ``--clients`` keep-alive connections
  for ``--seconds`` per round, either through the backend (``{id}-{port}.<domain>`` with the
  API key) or directly (sockets made in the sandbox's network namespace, so the same server
  over the same loopback with no proxy in between). Rounds alternate the order (direct
  first, then preview first, ...); the figure is the median of each side's rounds and
  their ratio. Target: preview >= 80% of direct. For scale, the same clients read the API's
  own ``GET /v1/sandbox/{id}`` in the same rounds: what the backend serves with no sandbox
  behind it.

The clients are raw sockets with a fixed request, in threads: they cost the machine far
less than the server side, which both modes share.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pulumi_leap0.backend.store import DB_FILE_NAME, Store  # noqa: E402
from pulumi_leap0.runner import sysutil  # noqa: E402

TEMPLATE = "system/debian:bookworm"
PORT = 8000
TARGET_RATIO = 0.8
SERVER = r"""
import http.server, sys
BODY = b"x" * 100
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    log = (data_dir / "server.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "pulumi_leap0.backend.cli", "serve", "--port", str(port),
         "--data-dir", str(data_dir), "--log-level", "warning"],
        cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
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


def bench_echo(base_url: str, key: str, sandbox_id: str, keys: int) -> list[float]:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        http.post(f"/v1/sandbox/{sandbox_id}/pty", json={"id": "bench"}).raise_for_status()
    url = base_url.replace("http://", "ws://") + f"/v1/sandbox/{sandbox_id}/pty/bench/connect"
    latencies: list[float] = []
    with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        ws.send(b"echo ready\n")
        seen = b""
        while b"ready\r\n" not in seen:
            seen += ws.recv(timeout=10)  # type: ignore[operator]
        time.sleep(0.2)
        for n in range(keys):
            char = b"abcdefghij"[n % 10:n % 10 + 1]
            started = time.perf_counter()
            ws.send(char)
            got = b""
            while char not in got:
                got += ws.recv(timeout=10)  # type: ignore[operator]
            latencies.append((time.perf_counter() - started) * 1000)
            if n % 50 == 49:
                ws.send(b"\x15")  # ^U: a fresh line for readline
                time.sleep(0.05)
                with_timeout_drain(ws)
    return latencies


def with_timeout_drain(ws: object) -> None:
    try:
        while True:
            ws.recv(timeout=0.05)  # type: ignore[attr-defined]
    except TimeoutError:
        pass


class Dialer:
    """Sockets to the sandbox: through the backend, or made in its network namespace."""

    def __init__(self, backend_port: int, netns: Path) -> None:
        self.backend_port = backend_port
        self.netns = netns
        self._lock = threading.Lock()

    def direct(self) -> socket.socket:
        with self._lock:  # setns changes only this thread; back before anything else
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            theirs = os.open(self.netns, os.O_RDONLY)
            try:
                sysutil.setns(theirs, sysutil.CLONE_NEWNET)
                try:
                    sock = socket.socket()
                finally:
                    sysutil.setns(own, sysutil.CLONE_NEWNET)
            finally:
                os.close(own)
                os.close(theirs)
        sock.connect(("127.0.0.1", PORT))
        return sock

    def preview(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.backend_port))


def _client(sock: socket.socket, request: bytes, deadline: float, counts: list[int]) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(30)
    done = 0
    buffer = b""
    with sock:
        while time.perf_counter() < deadline:
            sock.sendall(request)
            while True:
                head_end = buffer.find(b"\r\n\r\n")
                if head_end >= 0:
                    head = buffer[:head_end].lower()
                    start = head.find(b"content-length:") + len(b"content-length:")
                    length = int(head[start:head.find(b"\r\n", start) if
                                      head.find(b"\r\n", start) > 0 else None])
                    end = head_end + 4 + length
                    if len(buffer) >= end:
                        if not head.startswith(b"http/1.1 200"):
                            raise SystemExit(f"unexpected answer: {buffer[:200]!r}")
                        buffer = buffer[end:]
                        break
                chunk = sock.recv(65536)
                if not chunk:
                    raise SystemExit("connection closed")
                buffer += chunk
            done += 1
    counts.append(done)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of ``pid`` so far (the backend's cost, whatever the load)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_round(dial: object, request: bytes, clients: int, seconds: float) -> float:
    sockets = [dial() for _ in range(clients)]  # type: ignore[operator]
    counts: list[int] = []
    started = time.perf_counter()
    deadline = started + seconds
    threads = [threading.Thread(target=_client, args=(s, request, deadline, counts))
               for s in sockets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_pty needs root (sandboxes, network namespaces)")
    with tempfile.TemporaryDirectory(prefix="leap0-bench-pty-") as tmp:
        data_dir = Path(tmp)
        store = Store(data_dir / DB_FILE_NAME)
        key = store.create_api_key("bench")
        store.close()
        port = _free_port()
        server = _start_server(data_dir, port)
        base_url = f"http://127.0.0.1:{port}"
        http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"},
                            timeout=60)
        sandbox_id = ""
        try:
            created = http.post("/v1/sandbox/", json={"template_name": TEMPLATE,
                                                      "network_policy": {"mode": "deny-all"}})
            created.raise_for_status()
            sandbox_id = created.json()["id"]

            echo = bench_echo(base_url, key, sandbox_id, args.keys)
            print(f"pty echo (keystroke to echo, {len(echo)} keys): "
                  f"median {statistics.median(echo):.2f} ms, p99 {_percentile(echo, 0.99):.2f} ms")

            http.post(f"/v1/sandbox/{sandbox_id}/filesystem/write-file",
                      params={"path": "/tmp/server.py"}, content=SERVER.encode()
                      ).raise_for_status()
            http.post(f"/v1/sandbox/{sandbox_id}/process/execute", json={
                "command": f"nohup python3 /tmp/server.py {PORT} >/dev/null 2>&1 &"}
            ).raise_for_status()
            netns = next(Path("/run/netns").glob(f"leap0-*-{sandbox_id}"))
            dialer = Dialer(port, netns)
            for _ in range(100):
                try:
                    dialer.direct().close()
                    break
                except OSError:
                    time.sleep(0.05)
            host = f"{sandbox_id}-{PORT}.localhost:{port}".encode()
            preview_request = (b"GET / HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n"
                               % (host, key.encode()))
            direct_request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            bench_round(dialer.preview, preview_request, args.clients, 0.5)  # warm-up
            api_request = (b"GET /v1/sandbox/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Authorization: Bearer %s\r\n\r\n"
                           % (sandbox_id.encode(), key.encode()))
            rates: dict[str, list[float]] = {"direct": [], "preview": [], "api": []}
            proxy_cpu = proxied = 0.0
            for n in range(args.rounds):
                order = ("direct", "preview", "api") if n % 2 == 0 else ("api", "preview",
                                                                        "direct")
                for mode in order:
                    dial = dialer.direct if mode == "direct" else dialer.preview
                    request = {"direct": direct_request, "preview": preview_request,
                               "api": api_request}[mode]
                    cpu_before = cpu_seconds(server.pid)
                    rate = bench_round(dial, request, args.clients, args.seconds)
                    rates[mode].append(rate)
                    if mode == "preview":
                        proxy_cpu += cpu_seconds(server.pid) - cpu_before
                        proxied += rate * args.seconds
            direct, preview, api = (statistics.median(rates[m])
                                    for m in ("direct", "preview", "api"))
            ratio = preview / direct
            print(f"preview throughput ({args.clients} keep-alive clients, {args.rounds} rounds "
                  f"of {args.seconds:g} s, order alternated): direct {direct:.0f} req/s, "
                  f"preview {preview:.0f} req/s, ratio {ratio:.2f} "
                  f"(target >= {TARGET_RATIO:.2f}: {'met' if ratio >= TARGET_RATIO else 'MISSED'})")
            print(f"the API's own GET through the same clients: {api:.0f} req/s")
            print(f"backend CPU per preview request: {proxy_cpu / max(proxied, 1) * 1000:.3f} ms "
                  f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        finally:
            if sandbox_id:
                http.delete(f"/v1/sandbox/{sandbox_id}/")
            http.close()
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
