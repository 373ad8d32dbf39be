"""Attacks on the network boundary from inside a sandbox: IPv6 to the host and to other
sandboxes, whatever the policy, and the host forwarding packets that are not a sandbox's.

Every probe is the sandbox's own python3 connecting where a tenant would try; the host side
listens on ``[::]`` (every address, both families) and records who reached it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulumi_leap0 import spec
from pulumi_leap0.runner import Runner, netns, network
from tests.runner import conftest as runner_fixtures
from tests.runner.conftest import Sandboxes, require_capability
from tests.security.listeners import Listener
from tests.support import REPO_ROOT, require

# The runner tests' fixtures: a real Runner for this module, sandboxes destroyed after each test.
runner = runner_fixtures.runner
sandboxes = runner_fixtures.sandboxes

# Connects to each "address port" argument and reads; prints one line per target. A fresh
# IPv6 address is unusable for a second or two (duplicate address detection): a tenant
# would wait, so the probe does.
PROBE = textwrap.dedent("""
    import errno, socket, sys, time
    for target in sys.argv[1:]:
        address, port = target.rsplit(" ", 1)
        deadline = time.monotonic() + 5
        while True:
            try:
                info = socket.getaddrinfo(address, int(port), type=socket.SOCK_STREAM)[0]
                with socket.socket(info[0], socket.SOCK_STREAM) as s:
                    s.settimeout(3)
                    s.connect(info[4])
                    banner = s.recv(64)
                print("reached" if banner.startswith(b"leap0-host") else "blocked", address,
                      banner[:20])
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL and time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                print("blocked", address, errno.errorcode.get(exc.errno or 0, type(exc).__name__))
            break
""")


@pytest.fixture
def listener() -> Iterator[Listener]:
    """Greets whoever connects, so that a probe tells the host's answer from an egress
    filter's accepting the connection."""
    require(Path("/proc/net/if_inet6").exists(), "the host has no IPv6")
    server = Listener(b"leap0-host\n")
    try:
        yield server
    finally:
        server.close()


def probe(runner: Runner, sandbox_id: str, targets: list[str]) -> list[str]:
    args = " ".join(f"'{t}'" for t in targets)
    result = runner.exec(sandbox_id, f"python3 -c '{PROBE}' {args}", timeout=60)
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()


def eui64_link_local(mac: str) -> str:
    """The link-local address the kernel gives an interface with ``mac`` (RFC 4291)."""
    octets = [int(x, 16) for x in mac.split(":")]
    octets[0] ^= 0x02
    eui = [*octets[:3], 0xFF, 0xFE, *octets[3:]]
    return "fe80::" + ":".join(f"{eui[i] << 8 | eui[i + 1]:x}" for i in range(0, 8, 2))


def v6_addresses(*ip_args: str) -> list[str]:
    out = subprocess.run(["ip", "-6", "-o", *ip_args], capture_output=True, text=True,
                         check=False).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if " inet6 " in line]


def host_end_targets(runner: Runner, sandbox_id: str, port: int) -> list[str]:
    """Every IPv6 way to the host end of the sandbox's veth: the link-local address it has
    (or would have), through the sandbox's eth0, and its IPv4 address mapped into IPv6."""
    host_if, _ = netns.veth_names(network.netns_name(sandbox_id, runner.scope))
    mac = Path(f"/sys/class/net/{host_if}/address").read_text().strip()
    local = {eui64_link_local(mac), *v6_addresses("addr", "show", "dev", host_if,
                                                  "scope", "link")}
    gateway = runner.exec(sandbox_id, "ip route show default").stdout.split()[2]
    return [*(f"{a}%eth0 {port}" for a in sorted(local)), f"::ffff:{gateway} {port}"]


def global_targets(port: int) -> list[str]:
    """The host's own global IPv6 addresses (none is routed to a sandbox, but try)."""
    return [f"{a} {port}" for a in v6_addresses("addr", "show", "scope", "global")]


def mode(name: str) -> spec.NetworkPolicy:
    if name == "custom":
        return spec.NetworkPolicy(mode="custom", allow_domains=["allowed.leap0.test"])
    return spec.NetworkPolicy(mode=name)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", ["allow-all", "custom"])
def test_a_sandbox_reaches_no_host_service_over_ipv6(
    runner: Runner, sandboxes: Sandboxes, listener: Listener, policy: str
) -> None:
    require_capability(runner, "network_namespaces", "network_policy")
    box = sandboxes.start(network_policy=mode(policy))
    targets = host_end_targets(runner, box, listener.port) + global_targets(listener.port)
    results = probe(runner, box, targets)
    assert [r for r in results if r.startswith("reached")] == [], results
    assert listener.peers == []


def test_a_sandbox_started_before_the_upgrade_is_closed_too(
    runner: Runner, sandboxes: Sandboxes, listener: Listener
) -> None:
    """Sandboxes outlive a backend upgrade: one whose veth an older release made (no
    interface group, IPv6 on) is closed once the new host rules are installed."""
    require_capability(runner, "network_namespaces", "network_policy")
    box = sandboxes.start(network_policy=mode("allow-all"))
    host_if, _ = netns.veth_names(network.netns_name(box, runner.scope))
    subprocess.run(["ip", "link", "set", "dev", host_if, "group", "0"], check=True)
    Path(f"/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6").write_text("0")
    subprocess.run(["ip", "netns", "exec", network.netns_name(box, runner.scope), "sysctl",
                    "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"], check=True)
    network._host_rules_installed = False  # a new backend process
    network.install_host_rules()
    results = probe(runner, box, host_end_targets(runner, box, listener.port))
    assert [r for r in results if r.startswith("reached")] == [], results
    assert listener.peers == []


def test_a_deny_all_sandbox_reaches_no_host_service_over_ipv6(
    runner: Runner, sandboxes: Sandboxes, listener: Listener
) -> None:
    require_capability(runner, "network_namespaces", "network_policy")
    box = sandboxes.start(network_policy=mode("deny-all"))
    results = probe(runner, box, [f"::1 {listener.port}", *global_targets(listener.port)])
    assert [r for r in results if r.startswith("reached")] == [], results
    assert listener.peers == []


def test_no_sandbox_end_has_an_ipv6_address_but_loopback_keeps_one(
    runner: Runner, sandboxes: Sandboxes
) -> None:
    """Nothing for a neighbour to find: no link-local address on either end of the veth;
    the sandbox's own loopback still speaks IPv6 (``::1`` in /etc/hosts must work)."""
    require_capability(runner, "network_namespaces", "network_policy")
    box = sandboxes.start(network_policy=mode("allow-all"))
    name = network.netns_name(box, runner.scope)
    host_if, _ = netns.veth_names(name)
    assert v6_addresses("addr", "show", "dev", host_if) == []
    assert v6_addresses("-n", name, "addr", "show", "dev", "eth0") == []
    served = runner.exec(box, "python3 -c 'import socket; s = socket.create_server((\"::1\", 0), "
                         "family=socket.AF_INET6); socket.create_connection(s.getsockname()"
                         "[:2], timeout=3); print(\"ok\")'", timeout=30)
    assert served.stdout.strip() == "ok", served.stderr


BANNER_SERVER = ("import socket\n"
                 "s = socket.create_server((\"::\", 8081), family=socket.AF_INET6, "
                 "dualstack_ipv6=True)\n"
                 "while True:\n c, _ = s.accept(); c.sendall(b\"leap0-host\\n\"); c.close()")


def test_sandboxes_do_not_reach_each_other_over_ipv6(
    runner: Runner, sandboxes: Sandboxes
) -> None:
    require_capability(runner, "network_namespaces", "network_policy")
    attacker = sandboxes.start(network_policy=mode("allow-all"))
    victim = sandboxes.start(network_policy=mode("allow-all"))
    runner.exec(victim, f"python3 -c '{BANNER_SERVER}' >/dev/null 2>&1 &", timeout=5)
    victim_ns = network.netns_name(victim, runner.scope)
    mac = subprocess.run(["ip", "-n", victim_ns, "-o", "link", "show", "eth0"],
                         capture_output=True, text=True, check=True).stdout.split(
                             "link/ether ")[1].split()[0]
    victim_v4 = runner.exec(victim, "hostname -I").stdout.split()[0]
    local = {eui64_link_local(mac), *v6_addresses("-n", victim_ns, "addr", "show", "dev",
                                                  "eth0")}
    targets = [*(f"{a}%eth0 8081" for a in sorted(local)), f"::ffff:{victim_v4} 8081"]
    # The victim's server answers at home, so a "blocked" below is the boundary's doing.
    for _ in range(50):
        if probe(runner, victim, ["::1 8081"])[0].startswith("reached"):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the victim's server never answered at home")
    results = probe(runner, attacker, targets)
    assert [r for r in results if r.startswith("reached")] == [], results


# --- The host as a router -------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def routed_host() -> Iterator[tuple[str, str, str]]:
    """A stand-in for a host with forwarding off, between a LAN neighbour and a network
    behind it: three network namespaces, ``host`` with one veth to each of the others."""
    tag = secrets.token_hex(3)
    host, lan, behind = f"l0fh-{tag}", f"l0fl-{tag}", f"l0fb-{tag}"
    made: list[str] = []
    try:
        for ns in (host, lan, behind):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        for peer, net in ((lan, "10.252.1"), (behind, "10.252.2")):
            _ip("-n", host, "link", "add", "to-" + peer[2:4], "type", "veth", "peer", "name",
                "eth0", "netns", peer)
            _ip("-n", host, "addr", "add", f"{net}.1/24", "dev", "to-" + peer[2:4])
            _ip("-n", host, "link", "set", "to-" + peer[2:4], "up")
            _ip("-n", peer, "addr", "add", f"{net}.2/24", "dev", "eth0")
            _ip("-n", peer, "link", "set", "eth0", "up")
            _ip("-n", peer, "route", "add", "default", "via", f"{net}.1")
        subprocess.run(["ip", "netns", "exec", host, "sysctl", "-qw",
                        "net.ipv4.ip_forward=0"], check=True, timeout=30)
        yield host, lan, behind
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)


def connect(netns: str, attempts: int = 50) -> str:
    """From ``netns``, connect to the server behind the host (waiting while it starts)."""
    done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", textwrap.dedent(f"""
        import socket, time
        for _ in range({attempts}):
            try:
                socket.create_connection(("10.252.2.2", 8090), timeout=2)
                print("reached"); break
            except ConnectionRefusedError:
                time.sleep(0.1)  # not listening yet
            except OSError as exc:
                print("blocked", type(exc).__name__); break
        else:
            print("never listened")
    """)], capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.strip() or done.stderr.strip()


def test_sandbox_networking_does_not_make_the_host_a_router_for_others() -> None:
    """The allow-all NAT turns IPv4 forwarding on; a LAN neighbour must not be able to use
    the host as a router into the networks behind it because of that."""
    require(os.geteuid() == 0, "network namespaces need root")
    with routed_host() as (host, lan, behind):
        # What Runner.start does on the host before the first allow-all sandbox.
        subprocess.run(["ip", "netns", "exec", host, sys.executable, "-c",
                        "from pulumi_leap0.runner import network; network.install_host_rules()"],
                       check=True, timeout=60, cwd=REPO_ROOT,
                       env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        forwarding = subprocess.run(["ip", "netns", "exec", host, "sysctl", "-n",
                                     "net.ipv4.ip_forward"], capture_output=True, text=True,
                                    check=True).stdout.strip()
        assert forwarding == "1"  # as sandboxes need it
        server = subprocess.Popen(["ip", "netns", "exec", behind, sys.executable, "-m",
                                   "http.server", "8090", "--bind", "10.252.2.2"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # The server answers on its own network, so a "blocked" below is the host's doing.
            assert connect(behind) == "reached"
            reached = connect(lan)
        finally:
            server.kill()
            server.wait()
    assert reached.startswith("blocked"), reached
