"""Network policy as the sandbox lives it, against a test host of our own.

The test host is an HTTP server (and a UDP echo) in a network namespace this test makes,
behind a veth to the host at 10.250.x.x: traffic never leaves this machine.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pulumi_leap0 import spec
from pulumi_leap0.runner import Runner, netns, network
from tests.runner.conftest import Sandboxes, leftovers, neighbours, require_capability

# Probes run with the sandbox's python3 (the default template is the host's /usr).
CONNECT = textwrap.dedent("""
    import socket, sys
    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        if kind == "tcp":
            s = socket.create_connection((host, port), timeout=3)
            s.sendall(b"GET / HTTP/1.0\\r\\nHost: test\\r\\n\\r\\n")
            print(s.recv(200).decode(errors="replace").splitlines()[0])
        elif kind == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
            s.sendto(b"ping", (host, port)); print(s.recv(100).decode())
        else:
            print(socket.gethostbyname(host))
    except OSError as exc:
        print("blocked:", type(exc).__name__); sys.exit(1)
""")


@dataclass
class Host:
    address: str
    http_port: int = 8080
    udp_port: int = 5353


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def test_host(runner: Runner) -> Iterator[Host]:
    require_capability(runner, "network_namespaces", "network_policy")
    name = f"l0test-{secrets.token_hex(3)}"
    host_if, peer_if = f"l0th{name[-6:]}", f"l0tp{name[-6:]}"
    octet = secrets.randbelow(200) + 10
    host_ip, peer_ip = f"10.250.{octet}.1", f"10.250.{octet}.2"
    servers: list[subprocess.Popen[bytes]] = []
    try:
        _run("ip", "netns", "add", name)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if,
             "netns", name)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "-n", name, "addr", "add", f"{peer_ip}/30", "dev", peer_if)
        _run("ip", "-n", name, "link", "set", peer_if, "up")
        _run("ip", "-n", name, "link", "set", "lo", "up")
        udp_echo = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                    f"s.bind(('{peer_ip}', 5353))\nwhile True:\n d, a = s.recvfrom(100); "
                    "s.sendto(b'pong', a)")
        for command in ([sys.executable, "-m", "http.server", "8080", "--bind", peer_ip],
                        [sys.executable, "-c", udp_echo]):
            servers.append(subprocess.Popen(["ip", "netns", "exec", name, *command],
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
        time.sleep(0.5)
        yield Host(peer_ip)
    finally:
        for server in servers:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)
        subprocess.run(["ip", "link", "delete", host_if], capture_output=True)


def probe(runner: Runner, sandbox_id: str, kind: str, host: str, port: int = 0) -> str:
    result = runner.exec(sandbox_id, f"python3 -c '{CONNECT}' {kind} {host} {port}", timeout=20)
    return result.stdout.strip() or result.stderr.strip()


def policy(mode: str) -> spec.NetworkPolicy:
    return spec.NetworkPolicy(mode=mode)  # type: ignore[arg-type]


def test_allow_all_reaches_the_test_host(
    runner: Runner, sandboxes: Sandboxes, test_host: Host
) -> None:
    box = sandboxes.start(network_policy=policy("allow-all"))
    assert probe(runner, box, "tcp", test_host.address, test_host.http_port).startswith(
        "HTTP/1.0 200")
    assert probe(runner, box, "udp", test_host.address, test_host.udp_port) == "pong"


def test_no_policy_is_allow_all(runner: Runner, sandboxes: Sandboxes,
                                test_host: Host) -> None:
    box = sandboxes.start()
    assert probe(runner, box, "tcp", test_host.address, test_host.http_port).startswith("HTTP")


def test_deny_all_blocks_tcp_udp_and_dns(
    runner: Runner, sandboxes: Sandboxes, test_host: Host
) -> None:
    box = sandboxes.start(network_policy=policy("deny-all"))
    assert probe(runner, box, "tcp", test_host.address, test_host.http_port).startswith(
        "blocked")
    assert probe(runner, box, "udp", test_host.address, test_host.udp_port).startswith(
        "blocked")
    assert probe(runner, box, "dns", "pypi.org").startswith("blocked")
    routes = runner.exec(box, "cat /proc/net/route").stdout.splitlines()
    assert routes[1:] == []  # no route at all, so no program can find a way out


def test_sandboxes_reach_neither_each_other_nor_the_host(
    runner: Runner, sandboxes: Sandboxes, test_host: Host
) -> None:
    first = sandboxes.start(network_policy=policy("allow-all"))
    second = sandboxes.start(network_policy=policy("allow-all"))
    with neighbours(runner, attacker=first, victim=second) as (second_ip, gateway):
        assert probe(runner, second, "tcp", "127.0.0.1", 8081).startswith("HTTP")
        assert probe(runner, first, "tcp", second_ip, 8081).startswith("blocked")
        assert probe(runner, first, "tcp", gateway, 8082).startswith("blocked")


def test_destroy_removes_the_veth(runner: Runner, sandboxes: Sandboxes) -> None:
    box = sandboxes.start(network_policy=policy("allow-all"))
    host_if, _ = netns.veth_names(network.netns_name(box, runner.scope))
    assert Path(f"/sys/class/net/{host_if}").exists()
    runner.destroy(box)
    assert not Path(f"/sys/class/net/{host_if}").exists()
    assert leftovers(runner, box) == []


LEFTOVER = "192.0.2.77/32"


def _netns_inode(runner: Runner, box: str) -> int:
    record = runner._records.get(box)
    assert record is not None
    return os.stat(f"/proc/{record.init_pid}/ns/net").st_ino


def _made_ahead(runner: Runner, want: int) -> dict[int, str]:
    """The namespaces made ahead for the runner's scope, by inode, once ``want`` are."""
    netns.refill(runner.scope)
    deadline = time.monotonic() + 30
    while len(netns.prepared(runner.scope)) < want:
        assert time.monotonic() < deadline, "no namespaces were made ahead"
        time.sleep(0.05)
    return {os.stat(netns.NETNS_DIR / n).st_ino: n for n in netns.prepared(runner.scope)}


def test_a_namespace_made_ahead_serves_one_sandbox_and_goes_with_it(
    runner: Runner, sandboxes: Sandboxes, test_host: Host
) -> None:
    """The warm pool never hands a sandbox's leftovers to another: each namespace made ahead
    is taken by one sandbox, is never among those made ahead again, and is gone with it."""
    require_capability(runner, "network_namespaces", "network_policy")
    ahead = _made_ahead(runner, sum(netns.PREPARED.values()))
    first = sandboxes.start(network_policy=policy("allow-all"))
    inode = _netns_inode(runner, first)
    assert inode in ahead, "the sandbox did not get a namespace made ahead"
    assert ahead[inode] not in netns.prepared(runner.scope)
    assert probe(runner, first, "tcp", test_host.address, test_host.http_port).startswith("HTTP")
    # What a tenant could leave in a namespace, had it the rights: the test, as root, can.
    name = network.netns_name(first, runner.scope)
    subprocess.run(["ip", "-n", name, "addr", "add", LEFTOVER, "dev", "lo"], check=True)
    # Held open, the namespace cannot be freed, so its inode number names it alone.
    held = os.open(netns.NETNS_DIR / name, os.O_RDONLY)
    try:
        runner.destroy(first)
        assert leftovers(runner, first) == []
        seen = {inode}
        for mode in ("allow-all", "deny-all", "allow-all", "custom", "allow-all", "deny-all"):
            now = _made_ahead(runner, 1)
            assert inode not in now
            box = sandboxes.start(network_policy=policy(mode))
            mine = _netns_inode(runner, box)
            assert mine not in seen, f"a {mode} sandbox got a namespace used before"
            seen.add(mine)
            addrs = subprocess.run(["ip", "-n", network.netns_name(box, runner.scope), "-o",
                                    "addr", "show"], capture_output=True, text=True,
                                   check=True).stdout
            assert LEFTOVER not in addrs
        # The held namespace is no sandbox's and no pool's any more.
        assert all(os.stat(netns.NETNS_DIR / n).st_ino != inode
                   for n in os.listdir(netns.NETNS_DIR))
    finally:
        os.close(held)
