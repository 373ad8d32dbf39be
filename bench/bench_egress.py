"""Egress filter figures: what a custom network policy costs next to direct (allow-all) egress.

Two sandboxes run side by side against the test hosts (``tests/hosts``: HTTP/HTTPS servers
in a network namespace on this machine, nothing leaves it): ``direct`` with ``allow-all``
(veth, route, NAT) and ``filtered`` with a ``custom`` policy (allowed.leap0.test, and
api.transform.leap0.test as a transform domain), whose TCP goes through its host-side egress
filter. The same stdlib client (``CLIENT`` below, the sandbox's own python3) runs in both.
It connects to the allowed host's IP address and sends its name (Host header, SNI), so DNS
is out of the loop and the client is identical: the filter dials the name, direct egress
goes straight to the address. Figures, ``SECONDS`` each:

* HTTP on a new TCP connection per request: latency median and p90 (``Connection: close``).
  Its inverse is the new-connection rate of one client.
* HTTP/1.1 keep-alive (``http.client``): requests/s on one connection, and on ``CONNS``
  connections at once (one thread each).
* TLS on a new connection per request to allowed.leap0.test:443: through the filter an
  opaque tunnel, so the client verifies the host's own certificate (the test CA).
* The transform domain on a new TLS connection: the filter terminates TLS with the
  sandbox's CA (trusted by default in the sandbox), then dials and verifies upstream and
  injects a header; against direct TLS to the same host from the direct sandbox. And its
  keep-alive requests/s on one connection (every request through the filter's HTTP relay).

``ROUNDS`` rounds, each figure run in both sandboxes one after the other (the order flips
every round), after one warm-up pass. Printed per figure: the median over rounds of each
side's figure, filtered/direct as a percentage for throughput, the added milliseconds and the
ratio for latency. CPU per request (client, test server, filter; from /proc, so it includes
the server's log write of each request) says where the time goes. Then the filter's start
cost: ``Runner.start`` of sandboxes with this custom policy (nftables rules, the filter
process, its CA) against allow-all ones: interleaved pairs with a pause before each (creates
at API pace), then back to back, each kind after each kind, since what one create leaves
running in the background (a spare filter's imports, once) slows the next. And the CPU each
custom create's filter had spent when it listened, which does not depend on the load: a
filter started as an interpreter of its own pays its imports there (~0.25-0.4 s).

Sandboxes get the default 1 vCPU. The filter and the test server run on the host, outside
any sandbox cgroup; on a 2-core machine client, server and filter share the two cores.

Target: throughput through the filter >= 80% of direct (keep-alive requests/s, sequential
and concurrent, and the new-connection rate).

Run as root from the repo root: ``sudo PYTHONPATH=. python3 bench/bench_egress.py
[ROUNDS] [SECONDS]`` (defaults 5 and 1.25). About a minute and a half.
"""

from __future__ import annotations

import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The checkout's own package and its test hosts, whatever is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_leap0 import spec
from pulumi_leap0.runner import Runner, SandboxConfig
from pulumi_leap0.runner.network import EgressSettings
from tests.hosts import TestHosts

TEMPLATE = "system/debian:bookworm"
CONNS = 8
START_SAMPLES = 5
ALLOWED, TRANSFORM = "allowed.leap0.test", "api.transform.leap0.test"
TOKEN = "Bearer bench"
DIRECT_POLICY: dict[str, Any] = {"mode": "allow-all"}
CUSTOM_POLICY: dict[str, Any] = {
    "mode": "custom",
    "allow_domains": [ALLOWED],
    "transforms": [{"domain": TRANSFORM, "inject_headers": {"authorization": TOKEN}}],
}
TEST_CA = "/tmp/test-ca.pem"
CLIENT_PATH = "/tmp/client.py"

# Runs inside a sandbox (Debian's python3, stdlib only):
#   python3 client.py MODE IP NAME SECONDS CAFILE|- [CONNS]
# MODE: new (one connection per request, HTTP or TLS: CAFILE given or "default" means TLS),
# keepalive (one connection), concurrent (CONNS connections, one thread each).
# Prints one JSON line: n, seconds, rps, p50/p90 latency (ms), the process's CPU seconds.
CLIENT = r'''
import http.client, json, os, socket, ssl, sys, threading, time

mode, ip, name, seconds, ca = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), \
    sys.argv[5]
conns = int(sys.argv[6]) if len(sys.argv) > 6 else 1
tls = ca != "-"
context = ssl.create_default_context(cafile=None if ca == "default" else ca) if tls else None
port = 443 if tls else 80
expected = f"{ip} {name}\n".encode()


def connect():
    c = http.client.HTTPConnection(ip, port, timeout=10)
    sock = socket.create_connection((ip, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # By address, verified against the name: http.client would check the address.
    c.sock = context.wrap_socket(sock, server_hostname=name) if tls else sock
    return c


def get(c, close=False):
    headers = {"Host": name, "Connection": "close"} if close else {"Host": name}
    c.request("GET", "/", headers=headers)
    r = c.getresponse()
    body = r.read()
    if r.status != 200 or body != expected:
        raise SystemExit(f"unexpected answer: {r.status} {body!r}")


def loop(deadline, count):
    c = connect()
    n = 0
    while time.perf_counter() < deadline:
        get(c)
        n += 1
    c.close()
    count.append(n)


latencies, counts = [], []
cpu0 = sum(os.times()[:2])  # without the interpreter's start
start = time.perf_counter()
deadline = start + seconds
if mode == "new":
    while (t0 := time.perf_counter()) < deadline:
        c = connect()
        get(c, close=True)
        c.close()
        latencies.append((time.perf_counter() - t0) * 1000)
    counts.append(len(latencies))
elif mode == "keepalive":
    loop(deadline, counts)
elif mode == "concurrent":
    threads = [threading.Thread(target=loop, args=(deadline, counts)) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(counts) != conns:
        raise SystemExit("a connection failed")
else:
    raise SystemExit(f"unknown mode {mode}")
elapsed = time.perf_counter() - start
latencies.sort()


def pct(q):
    return latencies[min(len(latencies) - 1, round(q * (len(latencies) - 1)))] \
        if latencies else 0.0


print(json.dumps({"n": sum(counts), "seconds": elapsed, "rps": sum(counts) / elapsed,
                  "p50": pct(0.5), "p90": pct(0.9), "cpu": sum(os.times()[:2]) - cpu0}))
'''


class Figure:
    """One figure measured in both sandboxes: the client's arguments for each side
    (``MODE IP NAME CAFILE|- CONNS``) and its per-round results (the client's JSON, plus
    the CPU seconds of the watched host processes). ``target``: part of the 80% target."""

    def __init__(self, label: str, kind: str, direct: list[str], filtered: list[str],
                 target: bool = False) -> None:
        self.label, self.kind, self.target = label, kind, target  # latency | throughput
        self.args = {"direct": direct, "filtered": filtered}
        self.results: dict[str, list[dict[str, float]]] = {"direct": [], "filtered": []}

    def median(self, side: str, key: str) -> float:
        return statistics.median(r[key] for r in self.results[side])


def client(mode: str, ip: str, name: str, ca: str = "-", conns: int = 1) -> list[str]:
    return [mode, ip, name, ca, str(conns)]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def filter_pid(runner: Runner, sandbox_id: str) -> int:
    return int(json.loads((runner.root_dir / sandbox_id / "egress.json").read_text())["pid"])


def netns_pids(netns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    return [int(p) for p in out.split()]


def run_client(runner: Runner, sandbox_id: str, args: list[str], seconds: float,
               watched: list[int]) -> dict[str, float]:
    """One client run; ``host_cpu`` is the CPU the ``watched`` host processes spent in it."""
    before = [cpu_seconds(p) for p in watched]
    mode, ip, name, ca, conns = args
    result = runner.exec(sandbox_id, f"python3 {CLIENT_PATH} {mode} {ip} {name} {seconds} "
                         f"{ca} {conns}", timeout=seconds + 60)
    after = [cpu_seconds(p) for p in watched]
    if result.exit_code != 0:
        raise RuntimeError(f"client {args} failed in {sandbox_id}: "
                           f"{(result.stdout + result.stderr).strip()}")
    figures: dict[str, float] = json.loads(result.stdout)
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        figures[f"host_cpu{i}"] = a - b
    return figures


#: The pause before each paced pair: creates at API pace, nothing left running in between.
PACE_S = 1.0


#: CPU milliseconds each custom create's filter process had spent once it listened: its
#: whole life so far, so an interpreter start and imports count if it did them itself.
FILTER_CPU: list[float] = []


def _create(runner: Runner, policy: dict[str, Any]) -> tuple[float, float]:
    """start() and destroy() milliseconds of one sandbox."""
    sandbox_id = f"sbx-bench-{secrets.token_hex(6)}"
    config = SandboxConfig(id=sandbox_id, template=TEMPLATE,
                           network_policy=spec.NetworkPolicy.model_validate(policy))
    t0 = time.perf_counter()
    try:
        runner.start(config)
    finally:
        t1 = time.perf_counter()
        if policy is CUSTOM_POLICY:
            FILTER_CPU.append(cpu_seconds(filter_pid(runner, sandbox_id)) * 1000)
        runner.destroy(sandbox_id)
    return (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000


def start_cost(runner: Runner, samples: int) -> dict[str, tuple[list[float], list[float]]]:
    """start() and destroy() milliseconds of allow-all and custom sandboxes, interleaved:
    paced pairs, then back to back in the order A A C C (each create after one of each
    kind), keyed "paced <kind>" and "<previous> -> <kind>"."""
    policies = {"allow-all": DIRECT_POLICY, "custom": CUSTOM_POLICY}
    costs: dict[str, tuple[list[float], list[float]]] = {}

    def record(key: str, figures: tuple[float, float]) -> None:
        started, destroyed = costs.setdefault(key, ([], []))
        started.append(figures[0])
        destroyed.append(figures[1])

    for i in range(samples + 1):  # the first pair is a warm-up
        time.sleep(PACE_S)
        for name in ("allow-all", "custom"):
            figures = _create(runner, policies[name])
            if i:
                record(f"paced {name}", figures)
    previous = "custom"
    for name in ["allow-all", "allow-all", "custom", "custom"] * samples:
        record(f"{previous} -> {name}", _create(runner, policies[name]))
        previous = name
    return costs


def report(figures: list[Figure], rounds: int, seconds: float) -> dict[str, float]:
    """Print the comparison table; returns the throughput ratios the target is about."""
    print(f"\n{'figure':<38}{'direct':>12}{'filtered':>12}   filtered vs direct")
    ratios: dict[str, float] = {}
    for fig in figures:
        if fig.kind == "throughput":
            d, f = fig.median("direct", "rps"), fig.median("filtered", "rps")
            if fig.target:
                ratios[fig.label] = f / d
            print(f"{fig.label:<38}{d:>8.0f} r/s{f:>8.0f} r/s   {f / d:6.1%}")
            continue
        for q in ("p50", "p90"):
            d, f = fig.median("direct", q), fig.median("filtered", q)
            print(f"{fig.label + ' ' + q:<38}{d:>9.2f} ms{f:>9.2f} ms   "
                  f"{f - d:+6.2f} ms  x{f / d:4.2f}")
        if fig.target:
            d, f = 1000 / fig.median("direct", "p50"), 1000 / fig.median("filtered", "p50")
            ratios["new-connection rate"] = f / d
            print(f"{'  new-connection rate (1/p50)':<38}{d:>8.0f} c/s{f:>8.0f} c/s   "
                  f"{f / d:6.1%}")
    print(f"\nCPU per request, microseconds ({rounds} rounds x {seconds:g} s; "
          "client in the sandbox, test server and filter on the host)")
    print(f"{'figure':<38}{'client':>8}{'server':>8}   |{'client':>8}{'server':>8}"
          f"{'filter':>8}")
    for fig in figures:
        parts = []
        for side, keys in (("direct", ("cpu", "host_cpu0")),
                           ("filtered", ("cpu", "host_cpu0", "host_cpu1"))):
            n = sum(r["n"] for r in fig.results[side])
            parts.append("".join(f"{sum(r[k] for r in fig.results[side]) / n * 1e6:>8.0f}"
                                 for k in keys))
        print(f"{fig.label:<38}{parts[0]}   |{parts[1]}")
    return ratios


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 1.25
    with tempfile.TemporaryDirectory(prefix="leap0-bench-egress-") as tmp:
        root = Path(tmp) / "sandboxes"
        caps = Runner(root).capabilities()  # before the test hosts: they need root too
        if not (caps.root and caps.bubblewrap and caps.namespaces
                and caps.network_namespaces and caps.network_policy):
            print("bench_egress: root, bubblewrap with namespaces, network namespaces and "
                  "nftables are required:", caps.missing)
            return 1
        hosts = TestHosts(Path(tmp))
        runner: Runner | None = None
        ids: dict[str, str] = {}
        try:
            hosts.start()
            runner = Runner(root, egress=EgressSettings(resolver=hosts.resolver,
                                                        upstream_ca_file=hosts.ca_file))
            for side, policy in (("direct", DIRECT_POLICY), ("filtered", CUSTOM_POLICY)):
                ids[side] = f"sbx-bench-{side}-{secrets.token_hex(4)}"
                runner.start(SandboxConfig(
                    id=ids[side], template=TEMPLATE,
                    network_policy=spec.NetworkPolicy.model_validate(policy)))
                runner.files.write_file(ids[side], CLIENT_PATH, CLIENT.encode())
                runner.files.write_file(ids[side], TEST_CA, hosts.ca_file.read_bytes())
            server = netns_pids(hosts.netns)
            if len(server) != 1:
                raise RuntimeError(f"expected one test server process, found {server}")
            watched = {"direct": server, "filtered": [*server, filter_pid(runner, ids["filtered"])]}

            allowed, transform = hosts.address("allowed"), hosts.address("transform")
            figures = [
                Figure("HTTP new connection", "latency", client("new", allowed, ALLOWED),
                       client("new", allowed, ALLOWED), target=True),
                Figure("HTTP keep-alive, 1 connection", "throughput",
                       client("keepalive", allowed, ALLOWED),
                       client("keepalive", allowed, ALLOWED), target=True),
                Figure(f"HTTP keep-alive, {CONNS} connections", "throughput",
                       client("concurrent", allowed, ALLOWED, conns=CONNS),
                       client("concurrent", allowed, ALLOWED, conns=CONNS), target=True),
                Figure("TLS new connection (tunnel)", "latency",
                       client("new", allowed, ALLOWED, TEST_CA),
                       client("new", allowed, ALLOWED, TEST_CA)),
                Figure("TLS new connection, transform host", "latency",
                       client("new", transform, TRANSFORM, TEST_CA),
                       client("new", transform, TRANSFORM, "default")),
                Figure("TLS keep-alive, transform host", "throughput",
                       client("keepalive", transform, TRANSFORM, TEST_CA),
                       client("keepalive", transform, TRANSFORM, "default")),
            ]
            # Warm-up: imports, the filter's first lookups, the transform certificate.
            for fig in figures:
                for side in ("direct", "filtered"):
                    run_client(runner, ids[side], fig.args[side], 0.3, watched[side])
            last = hosts.log_file.read_text().splitlines()[-1]
            seen = json.loads(last)
            if seen["host"] != TRANSFORM or dict(seen["headers"]).get("authorization") != TOKEN:
                raise RuntimeError(f"the transform did not apply: {last}")

            t0 = time.perf_counter()
            for r in range(rounds):
                for fig in figures:
                    order = ("direct", "filtered") if r % 2 == 0 else ("filtered", "direct")
                    for side in order:
                        fig.results[side].append(
                            run_client(runner, ids[side], fig.args[side], seconds,
                                       watched[side]))
            took = time.perf_counter() - t0
            print(f"egress filter vs direct: {rounds} rounds x {seconds:g} s per figure and side "
                  f"({took:.0f} s), 1 vCPU sandboxes, {os.cpu_count()} host CPUs, "
                  f"test hosts on this machine")
            ratios = report(figures, rounds, seconds)

            for side in ("direct", "filtered"):
                runner.destroy(ids.pop(side))
            costs = start_cost(runner, START_SAMPLES)
            print(f"\nstart cost, median of {START_SAMPLES} (custom: nftables rules, filter "
                  "process, its CA); paced, then back to back after the kind named first")
            base_start, base_destroy = (statistics.median(v) for v in costs["paced allow-all"])
            for name, (started, destroyed) in costs.items():
                s, d = statistics.median(started), statistics.median(destroyed)
                extra = "" if name == "paced allow-all" else \
                    f"   ({s - base_start:+.1f} ms start, {d - base_destroy:+.1f} ms destroy)"
                print(f"{name:<22} start() {s:7.1f} ms   destroy() {d:7.1f} ms{extra}")
            print(f"custom filter's own CPU when it listens: median "
                  f"{statistics.median(FILTER_CPU):.0f} ms of {len(FILTER_CPU)} creates")

            worst = min(ratios.values())
            verdict = "met" if worst >= 0.8 else "NOT met"
            print(f"\ntarget: throughput through the filter >= 80% of direct: {verdict} ("
                  + "; ".join(f"{k} {v:.0%}" for k, v in ratios.items()) + ")")
        finally:
            if runner is not None:
                for sandbox_id in ids.values():
                    runner.destroy(sandbox_id)
            hosts.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
