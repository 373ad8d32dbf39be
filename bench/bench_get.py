"""GET ``/v1/sandbox/{id}/`` throughput of two checkouts side by side, rounds alternated.

    python bench/bench_get.py [--base CHECKOUT] [--rounds 4] [--clients 32] [--seconds 4]

Starts ``leap0-backend serve`` from this checkout and, with ``--base``, from another one
(each on its own port and data dir), then runs ``--rounds`` rounds of
``bench_backend.bench_get`` against each, alternating which one goes first, and prints the
median req/s and server CPU per request of each, and their ratios. The machine is shared:
the ratios, measured in the same minutes, are the figures to trust.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
from pathlib import Path

from bench_backend import REPO_ROOT, TARGET_GET_RPS, _free_port, _start_server, bench_get
from bench_pty import cpu_seconds

from pulumi_leap0.backend.store import DB_FILE_NAME, Store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=None,
                        help="another checkout to measure beside this one (e.g. main's)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--client-processes", type=int, default=2)
    args = parser.parse_args()
    roots = {"this": REPO_ROOT}
    if args.base is not None:
        roots = {"base": args.base.resolve(), **roots}
    rates: dict[str, list[float]] = {name: [] for name in roots}
    costs: dict[str, list[float]] = {name: [] for name in roots}
    with tempfile.TemporaryDirectory(prefix="leap0-bench-get-") as tmp:
        servers, urls, keys = {}, {}, {}
        try:
            for name, root in roots.items():
                data_dir = Path(tmp) / name
                data_dir.mkdir()
                data_dir.chmod(0o711)
                port = _free_port()
                servers[name] = _start_server(data_dir, port, root=root)
                store = Store(data_dir / DB_FILE_NAME)
                keys[name] = store.create_api_key("bench")
                store.close()
                urls[name] = f"http://127.0.0.1:{port}"
            for round_number in range(args.rounds):
                order = list(roots) if round_number % 2 == 0 else list(reversed(roots))
                for name in order:
                    cpu_before = cpu_seconds(servers[name].pid)
                    rate, errors = bench_get(urls[name], keys[name], args.clients,
                                             args.seconds, args.client_processes)
                    if errors:
                        raise SystemExit(f"{name}: {errors} errors")
                    # Includes the create and delete of the bench's sandbox: a few ms.
                    cpu_s = cpu_seconds(servers[name].pid) - cpu_before
                    cpu_us = cpu_s / (rate * args.seconds) * 1e6
                    rates[name].append(rate)
                    costs[name].append(cpu_us)
                    print(f"round {round_number + 1} {name}: {rate:,.0f} req/s, "
                          f"server CPU {cpu_us:.0f} us/request", flush=True)
        finally:
            for server in servers.values():
                server.send_signal(signal.SIGTERM)
                server.wait(30)
    rate, cpu = statistics.median(rates["this"]), statistics.median(costs["this"])
    print(f"GET /v1/sandbox/{{id}}/, {args.clients} clients, median of {args.rounds} rounds: "
          f"this ({REPO_ROOT}) {rate:,.0f} req/s at {cpu:.0f} us of server CPU each "
          f"(target >= {TARGET_GET_RPS:,.0f} req/s); load {os.getloadavg()[0]:.2f}")
    if args.base is not None:
        base, base_cpu = statistics.median(rates["base"]), statistics.median(costs["base"])
        print(f"base ({roots['base']}) {base:,.0f} req/s at {base_cpu:.0f} us; this/base: "
              f"{rate / base:.2f} (req/s), {cpu / base_cpu:.2f} (CPU per request)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
