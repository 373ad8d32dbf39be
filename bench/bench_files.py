"""File calls through HTTP: latency of the small calls and the cost of a sandbox's first.

    python bench/bench_files.py [--baseline /work/main] [--rounds 200]

Starts a real ``leap0-backend serve`` from this checkout and, with ``--baseline``, a second
one from another checkout (say main), each with a throwaway data dir and one sandbox, then
times the same calls against both, alternating which goes first in each round, so both
see the same machine load. Per call: the median and p90 over ``--rounds``, in ms.

* stat, exists, ls of /etc, read-file of a 4 KiB file, write-file of 4 KiB, mkdir+delete;
* read-file of 32 MiB (streamed) and write-file of 32 MiB;
* first call on a fresh sandbox (it starts the sandbox's file helper), over a few sandboxes.

Target: a small read-file within a few ms of the baseline's.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from pulumi_leap0.backend.store import DB_FILE_NAME, Store  # noqa: E402

TEMPLATE = "system/debian:bookworm"
TARGET_EXTRA_MS = 3.0
SMALL = os.urandom(4096)
LARGE = os.urandom(32 * 1024 * 1024)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One backend, from one checkout, with one organization and one sandbox."""

    def __init__(self, name: str, repo: Path, data_dir: Path) -> None:
        self.name, self.repo, self.data_dir = name, repo, data_dir
        data_dir.chmod(0o711)  # the sandboxes' uids traverse it (bubblewrap binds from it)
        port = _free_port()
        log = (data_dir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pulumi_leap0.backend.cli", "serve", "--port", str(port),
             "--data-dir", str(data_dir), "--log-level", "warning"],
            cwd=repo, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(repo)},
        )
        self.base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((data_dir / "server.log").read_text())
            try:
                if httpx.get(f"{self.base_url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        store = Store(data_dir / DB_FILE_NAME)
        key = store.create_api_key("bench")
        store.close()
        self.http = httpx.Client(base_url=self.base_url, timeout=120,
                                 headers={"Authorization": f"Bearer {key}"})
        self.sandbox = self.create()
        self.fs(self.sandbox, "write-file", params={"path": "/tmp/small"}, content=SMALL)
        self.fs(self.sandbox, "write-file", params={"path": "/tmp/large"}, content=LARGE)

    def create(self) -> str:
        created = self.http.post("/v1/sandbox/", json={"template_name": TEMPLATE})
        created.raise_for_status()
        sandbox_id: str = created.json()["id"]
        return sandbox_id

    def fs(self, sandbox_id: str, call: str, **kwargs: object) -> httpx.Response:
        answer = self.http.post(f"/v1/sandbox/{sandbox_id}/filesystem/{call}",
                                **kwargs)  # type: ignore[arg-type]
        if answer.status_code >= 300:
            raise SystemExit(f"{self.name} {call}: {answer.status_code} {answer.text[:200]}")
        return answer

    def close(self) -> None:
        self.http.delete(f"/v1/sandbox/{self.sandbox}/")
        self.http.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def _calls(server: Server) -> dict[str, Callable[[], object]]:
    box = server.sandbox
    return {
        "stat": lambda: server.fs(box, "stat", json={"path": "/tmp/small"}),
        "exists": lambda: server.fs(box, "exists", json={"path": "/tmp/small"}),
        "ls /etc": lambda: server.fs(box, "ls", json={"path": "/etc"}),
        "read-file 4 KiB": lambda: server.fs(box, "read-file", json={"path": "/tmp/small"}),
        "write-file 4 KiB": lambda: server.fs(box, "write-file", params={"path": "/tmp/w"},
                                              content=SMALL),
        "mkdir+delete": lambda: (server.fs(box, "mkdir", json={"path": "/tmp/d"}),
                                 server.fs(box, "delete", json={"path": "/tmp/d"})),
    }


def _large(server: Server) -> dict[str, Callable[[], object]]:
    box = server.sandbox
    return {
        "read-file 32 MiB": lambda: server.fs(box, "read-file", json={"path": "/tmp/large"}),
        "write-file 32 MiB": lambda: server.fs(box, "write-file", params={"path": "/tmp/w"},
                                               content=LARGE),
    }


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def _first_call(server: Server) -> float:
    sandbox_id = server.create()
    try:
        return _timed(lambda: server.fs(sandbox_id, "stat", json={"path": "/"}))
    finally:
        server.http.delete(f"/v1/sandbox/{sandbox_id}/")


def _report(servers: list[Server], figures: dict[str, dict[str, list[float]]]) -> None:
    names = [s.name for s in servers]
    print(f"{'call':<22}" + "".join(f"{n + ' median':>18}{'p90':>8}" for n in names))
    for call, by_server in figures.items():
        row = f"{call:<22}"
        for name in names:
            values = sorted(by_server[name])
            p90 = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
            row += f"{statistics.median(values):>15.2f} ms{p90:>8.2f}"
        print(row)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--large-rounds", type=int, default=10)
    parser.add_argument("--fresh", type=int, default=8, help="sandboxes for the first call")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="leap0-bench-") as tmp:
        checkouts = [("this", REPO_ROOT)]
        if args.baseline:
            checkouts.insert(0, ("baseline", args.baseline.resolve()))
        servers: list[Server] = []
        try:
            for name, repo in checkouts:
                (Path(tmp) / name).mkdir()
                servers.append(Server(name, repo, Path(tmp) / name))
            figures: dict[str, dict[str, list[float]]] = {}
            plan = [(_calls, args.rounds), (_large, args.large_rounds)]
            for calls_of, rounds in plan:
                calls = {s.name: calls_of(s) for s in servers}
                for name in calls[servers[0].name]:
                    for call in calls.values():  # warm up: helpers, caches, connections
                        _timed(call[name])
                    for i in range(rounds):
                        order = servers if i % 2 == 0 else servers[::-1]
                        for server in order:
                            figures.setdefault(name, {}).setdefault(server.name, []).append(
                                _timed(calls[server.name][name]))
            for i in range(args.fresh):
                for server in servers if i % 2 == 0 else servers[::-1]:
                    figures.setdefault("first call (fresh)", {}).setdefault(
                        server.name, []).append(_first_call(server))
            _report(servers, figures)
        finally:
            for server in servers:
                server.close()
    if len(servers) < 2:
        return 0
    small = figures["read-file 4 KiB"]
    extra = statistics.median(small["this"]) - statistics.median(small["baseline"])
    print(f"read-file 4 KiB: {extra:+.2f} ms against the baseline "
          f"(target within {TARGET_EXTRA_MS:.0f} ms)")
    return 0 if extra <= TARGET_EXTRA_MS else 1


if __name__ == "__main__":
    sys.exit(main())
