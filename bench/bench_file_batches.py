"""Batch file calls against the one-file calls they replace, side by side on one backend.

    python bench/bench_file_batches.py [--files 50] [--rounds 20]

Starts a real ``leap0-backend serve`` from this checkout (``bench_files.Server``) with one
sandbox, then per round, alternating which goes first: ``write-files`` of N files of
4 KiB against N ``write-file`` calls, and ``read-files`` of them against N ``read-file``
calls; then ``grep`` and ``glob`` over a tree of N x 40 files against the same search done
by ``process/execute`` (``grep -rn``, ``find -name``) in the sandbox. Medians in ms, and
the ratio (batch / one-by-one; below 1 the batch is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_files import REPO_ROOT, SMALL, Server, _timed


def _pairs(server: Server, count: int) -> dict[str, tuple[Callable[[], object],
                                                          Callable[[], object]]]:
    box = server.sandbox
    paths = [f"/tmp/batch/{i}.txt" for i in range(count)]

    def write_each() -> None:
        for path in paths:
            server.fs(box, "write-file", params={"path": path}, content=SMALL)

    def read_each() -> None:
        for path in paths:
            server.fs(box, "read-file", json={"path": path})

    def execute(command: str) -> Callable[[], object]:
        return lambda: server.http.post(f"/v1/sandbox/{box}/process/execute",
                                        json={"command": command, "timeout": 60})

    return {
        f"write {count} files": (
            lambda: server.fs(box, "write-files", files=[(p, SMALL) for p in paths]),
            write_each),
        f"read {count} files": (
            lambda: server.fs(box, "read-files", json={"paths": paths}), read_each),
        "grep a tree": (
            lambda: server.fs(box, "grep", json={"path": "/tmp/tree", "pattern": "needle"}),
            execute("grep -rn needle /tmp/tree")),
        "glob a tree": (
            lambda: server.fs(box, "glob", json={"path": "/tmp/tree", "pattern": "*.py"}),
            execute("find /tmp/tree -name '*.py'")),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="leap0-bench-") as tmp:
        server = Server("this", REPO_ROOT, Path(tmp))
        try:
            server.http.post(f"/v1/sandbox/{server.sandbox}/process/execute", json={
                "command": f"mkdir -p /tmp/tree && cd /tmp/tree && for d in $(seq {args.files});"
                " do mkdir $d; for f in $(seq 40); do echo \"line needle $f\" > $d/$f.py; done;"
                " done", "timeout": 120}).raise_for_status()
            pairs = _pairs(server, args.files)
            print(f"{'call':<18}{'batch median':>16}{'one by one':>16}{'ratio':>8}")
            for name, (batch, each) in pairs.items():
                batch(), each()  # warm up
                times: dict[str, list[float]] = {"batch": [], "each": []}
                for i in range(args.rounds):
                    order = [("batch", batch), ("each", each)]
                    for label, call in order if i % 2 == 0 else order[::-1]:
                        times[label].append(_timed(call))
                b, e = statistics.median(times["batch"]), statistics.median(times["each"])
                print(f"{name:<18}{b:>13.1f} ms{e:>13.1f} ms{b / e:>8.2f}")
        finally:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
