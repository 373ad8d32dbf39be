"""Custom network policies as a sandbox lives them, against test hosts of our own.

The hosts (``tests/hosts``) are named HTTP/HTTPS servers in a network namespace on this
machine, reached by name through a DNS server the test runs; the runner's egress filter is
pointed at that resolver and trusts the hosts' test CA upstream. Every probe is a real
program in the sandbox (curl, python3) with no proxy variable set: the policy must hold
whatever the program does.
"""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulumi_leap0 import spec
from pulumi_leap0.runner import Runner, SandboxConfig, sysutil
from pulumi_leap0.runner.network import EgressSettings
from tests.hosts import TestHosts
from tests.runner.conftest import (
    TEMPLATE,
    Sandboxes,
    leftovers,
    neighbours,
    new_id,
    require_capability,
)

SECRET = "Bearer leap0-test-secret-6f1c"


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory, hosts: TestHosts) -> Runner:
    r = Runner(tmp_path_factory.mktemp("egress") / "sandboxes",
               egress=EgressSettings(resolver=hosts.resolver, upstream_ca_file=hosts.ca_file))
    require_capability(r, "bubblewrap", "namespaces", "network_namespaces", "network_policy")
    return r


def custom(hosts: TestHosts, **extra: object) -> spec.NetworkPolicy:
    policy = {
        "mode": "custom",
        "allow_domains": ["allowed.leap0.test", "*.wild.leap0.test", "rebind.leap0.test",
                          "metadata.leap0.test"],
        "allow_cidrs": [f"{hosts.address('cidr')}/32"],
        "transforms": [{"domain": "api.transform.leap0.test",
                        "inject_headers": {"authorization": SECRET},
                        "strip_headers": ["x-sandbox-token"]}],
    }
    policy.update(extra)
    return spec.NetworkPolicy.model_validate(policy)


@pytest.fixture(scope="module")
def box(runner: Runner, hosts: TestHosts) -> Iterator[str]:
    """One sandbox under the custom policy, shared by the read-only probes below."""
    sandbox_id = new_id()
    runner.start(SandboxConfig(id=sandbox_id, template=TEMPLATE,
                               network_policy=custom(hosts)))
    try:
        yield sandbox_id
    finally:
        runner.destroy(sandbox_id)


def sh(runner: Runner, sandbox_id: str, command: str) -> tuple[int, str]:
    # No proxy variable exists in a sandbox; unset them anyway so no probe can lean on one.
    result = runner.exec(sandbox_id, "unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY "
                         f"ALL_PROXY NO_PROXY; {command}", timeout=30)
    return result.exit_code, (result.stdout + result.stderr).strip()


def curl(runner: Runner, sandbox_id: str, args: str) -> tuple[int, str]:
    return sh(runner, sandbox_id, f"curl -sS -m 8 --noproxy '*' {args}")


# Probes run with the sandbox's python3.
UDP = ("python3 -c \"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
       "s.settimeout(3); s.sendto(b'ping', ('{host}', 5353)); print(s.recv(10).decode())\"")
DNS = ("python3 -c \"import socket, struct; q = struct.pack('!6H', 7, 256, 1, 0, 0, 0) + "
       "b''.join(bytes([len(p)]) + p.encode() for p in '{name}'.split('.')) + b'\\0' + "
       "struct.pack('!2H', 1, 1); s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
       "s.settimeout(3); s.sendto(q, ('{server}', {port})); "
       "print('rcode', s.recv(512)[3] & 15)\"")


HUNT = """
import os
needle = "{reversed_needle}"[::-1].encode()
places = [f"/proc/{{p}}/{{f}}" for p in os.listdir("/proc") if p.isdigit()
          for f in ("environ", "cmdline")] + ["/proc/mounts"]
for top in ("/etc", "/run", "/tmp", "/var/tmp", "/dev/shm", os.environ["HOME"]):
    for root, _, files in os.walk(top):
        places += [os.path.join(root, f) for f in files]
for place in places:
    try:
        with open(place, "rb") as fh:
            if needle in fh.read():
                print("found in", place)
    except OSError:
        pass
print("searched")
"""


def dns_query(server: str, name: str, port: int | str = 53) -> str:
    """A raw DNS query for ``name`` to ``server``, bypassing /etc/resolv.conf."""
    return DNS.format(server=server, name=name, port=port)


# --- Reachable: allowed names, wildcards, CIDRs --------------------------------------------


def test_allowed_domain_is_reached_by_name_over_http_and_https(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    allowed = hosts.address("allowed")
    assert curl(runner, box, "http://allowed.leap0.test/") == (
        0, f"{allowed} allowed.leap0.test")
    # An opaque tunnel: the sandbox sees the host's own certificate, from the test CA.
    runner.files.write_file(box, "/tmp/test-ca.pem", hosts.ca_file.read_bytes())
    assert curl(runner, box, "--cacert /tmp/test-ca.pem https://allowed.leap0.test/") == (
        0, f"{allowed} allowed.leap0.test")


def test_tunnel_carries_large_bodies_keep_alive_and_half_close(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    script = textwrap.dedent("""
        import http.client, socket
        c = http.client.HTTPConnection("allowed.leap0.test")
        for size in (5_000_000, 3):
            c.request("POST", "/", body=b"x" * size)
            r = c.getresponse(); print(r.status, r.read().decode().split()[1])
        s = socket.create_connection(("allowed.leap0.test", 80))
        s.sendall(b"GET / HTTP/1.0\\r\\nHost: allowed.leap0.test\\r\\n\\r\\n")
        s.shutdown(socket.SHUT_WR)  # half-closed: the answer must still come back
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        print(answer.split(b" ")[1].decode())
    """)
    before = len(hosts.requests())
    runner.files.write_file(box, "/tmp/tunnel.py", script.encode())
    assert sh(runner, box, "python3 /tmp/tunnel.py") == (
        0, "200 allowed.leap0.test\n200 allowed.leap0.test\n200")
    assert [r["body_bytes"] for r in hosts.requests()[before:]] == [5_000_000, 3, 0]


def test_wildcard_allows_subdomains_but_not_the_domain_itself(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    wild = hosts.address("wild")
    for name in ("api.wild.leap0.test", "deep.api.wild.leap0.test"):
        assert curl(runner, box, f"http://{name}/") == (0, f"{wild} {name}")
    code, out = curl(runner, box, "http://wild.leap0.test/")
    assert code == 6, out  # the sandbox's resolver does not know it


def test_allowed_cidr_is_reached_directly_over_tcp_and_udp(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    cidr_host = hosts.address("cidr")
    assert curl(runner, box, f"http://{cidr_host}/") == (0, f"{cidr_host} {cidr_host}")
    assert sh(runner, box, UDP.format(host=cidr_host)) == (0, "pong")


def test_dns_answers_allowed_names_only_whatever_server_is_asked(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    assert sh(runner, box, "getent hosts allowed.leap0.test")[1].split()[0] == \
        hosts.address("allowed")
    assert sh(runner, box, "getent hosts forbidden.leap0.test")[0] == 2
    # Asking another server directly (the hosts' own DNS, or any address on port 53) still
    # gets the sandbox's resolver: it answers NXDOMAIN (3) for what the policy leaves out.
    for server in (hosts.address("forbidden"), "1.1.1.1"):
        assert sh(runner, box, dns_query(server, "forbidden.leap0.test")) == (0, "rcode 3")
        assert sh(runner, box, dns_query(server, "allowed.leap0.test")) == (0, "rcode 0")
    gateway, port = hosts.resolver.split(":")
    code, _ = sh(runner, box, dns_query(gateway, "forbidden.leap0.test", port))
    assert code != 0  # the real resolver, on its own port, is not reachable at all


# --- Refused: other names, raw addresses, spoofed names, bypasses -------------------------


def test_forbidden_host_is_refused_by_name_by_raw_ip_and_over_udp(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    forbidden = hosts.address("forbidden")
    before = len(hosts.requests())
    assert curl(runner, box, "http://forbidden.leap0.test/")[0] == 6
    for url in (f"http://{forbidden}/", f"https://{forbidden}/", f"http://{forbidden}:8080/"):
        code, out = curl(runner, box, f"-k {url}")
        assert code != 0, out
    assert sh(runner, box, UDP.format(host=forbidden))[0] != 0
    assert all(r["ip"] != forbidden for r in hosts.requests()[before:])


def test_spoofed_host_or_sni_leads_to_the_named_host_or_nowhere(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    allowed, forbidden = hosts.address("allowed"), hosts.address("forbidden")
    before = len(hosts.requests())
    # The forbidden host's address with an allowed name: the filter dials the name.
    assert curl(runner, box, f"-H 'Host: allowed.leap0.test' http://{forbidden}/") == (
        0, f"{allowed} allowed.leap0.test")
    # /etc/hosts is read-only; --resolve is the same lie told to one program.
    assert curl(runner, box, f"-k --resolve allowed.leap0.test:443:{forbidden} "
                "https://allowed.leap0.test/") == (0, f"{allowed} allowed.leap0.test")
    # An allowed address with a forbidden name: refused, in HTTP and in the SNI.
    assert curl(runner, box, f"-H 'Host: forbidden.leap0.test' http://{allowed}/")[0] != 0
    assert curl(runner, box, f"-k --resolve forbidden.leap0.test:443:{allowed} "
                "https://forbidden.leap0.test/")[0] != 0
    assert all(r["ip"] != forbidden for r in hosts.requests()[before:])


def test_the_filter_port_itself_applies_the_same_policy(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    from pulumi_leap0.runner.egress import PROXY_PORT

    assert curl(runner, box, f"-H 'Host: forbidden.leap0.test' http://127.0.0.1:{PROXY_PORT}/"
                )[0] != 0
    code, out = curl(runner, box, f"-H 'Host: allowed.leap0.test' http://127.0.0.1:{PROXY_PORT}/")
    assert code != 0 or out.startswith(hosts.address("allowed")), out


def test_stalled_heads_cost_the_filter_little_and_slow_heads_still_pass(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    script = textwrap.dedent("""
        import socket, time
        stalled = []
        for _ in range(200):  # half a request each, then nothing
            s = socket.create_connection(("allowed.leap0.test", 80))
            s.sendall(b"GET / HTTP/1.1\\r\\nHost: allowed.leap0.test\\r\\n")
            stalled.append(s)
        slow = socket.create_connection(("allowed.leap0.test", 80))
        slow.sendall(b"GET / HTTP/1.1\\r\\nHost: allowed.le")
        time.sleep(0.5)
        slow.sendall(b"ap0.test\\r\\nConnection: close\\r\\n\\r\\n")
        print(slow.recv(200).split(b"\\r\\n")[0].decode())
        time.sleep(2)
    """)
    runner.files.write_file(box, "/tmp/stall.py", script.encode())
    pid = _filter_pid(runner, box)
    before = _cpu_seconds(pid)
    assert sh(runner, box, "python3 /tmp/stall.py") == (0, "HTTP/1.1 200")  # output stripped
    assert _cpu_seconds(pid) - before < 1.0  # 200 stalled connections for ~2.5 s


def _has_capability(bit: int) -> bool:
    effective = next(line for line in Path("/proc/self/status").read_text().splitlines()
                     if line.startswith("CapEff:"))
    return bool(int(effective.split()[1], 16) >> bit & 1)


def _cpu_seconds(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_allowed_names_that_resolve_to_the_host_or_metadata_are_not_dialled(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    # DNS rebinding: an allowed name answering 127.0.0.1 or 169.254.169.254.
    for name in ("rebind.leap0.test", "metadata.leap0.test"):
        assert sh(runner, box, f"getent hosts {name}")[0] == 2
        code, out = curl(runner, box, f"-H 'Host: {name}' http://{hosts.address('allowed')}/")
        assert code != 0, out


def test_sandbox_cannot_change_its_rules_or_routes(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    for attempt in ("nft flush ruleset", "nft delete table inet leap0_egress",
                    "ip route replace default dev lo", "ip link set eth0 down",
                    "ip addr add 10.251.0.99/32 dev eth0"):
        code, out = sh(runner, box, attempt)
        assert code != 0, f"{attempt}: {out}"
    assert curl(runner, box, f"http://{hosts.address('forbidden')}/")[0] != 0
    assert curl(runner, box, "http://allowed.leap0.test/")[0] == 0


# --- Transforms ----------------------------------------------------------------------------


def test_transform_injects_and_strips_headers_over_verified_https(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    before = len(hosts.requests())
    # No -k and no --cacert: the sandbox trusts its own CA through its trust bundle.
    code, out = curl(runner, box, "-H 'x-sandbox-token: t0k3n' -H 'authorization: mine' "
                     "-H 'x-kept: yes' https://api.transform.leap0.test/v1/models")
    assert (code, out) == (0, f"{hosts.address('transform')} api.transform.leap0.test")
    seen = hosts.requests()[before:]
    assert len(seen) == 1 and seen[0]["tls"]
    headers = dict(seen[0]["headers"])
    assert headers["authorization"] == SECRET  # injected, and the sandbox's own replaced
    assert "x-sandbox-token" not in headers
    assert headers["x-kept"] == "yes"
    assert [k for k, _ in seen[0]["headers"]].count("authorization") == 1


def test_transform_keeps_headers_across_keep_alive_requests_and_bodies(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    before = len(hosts.requests())
    script = textwrap.dedent("""
        import http.client, ssl
        c = http.client.HTTPSConnection("api.transform.leap0.test",
                                        context=ssl.create_default_context())
        for body in (None, b"x" * 200000):
            c.request("POST" if body else "GET", "/", body=body,
                      headers={"x-sandbox-token": "t"})
            r = c.getresponse(); print(r.status, r.read().decode().split()[1])
    """)
    runner.files.write_file(box, "/tmp/keepalive.py", script.encode())
    assert sh(runner, box, "python3 /tmp/keepalive.py") == (
        0, "200 api.transform.leap0.test\n200 api.transform.leap0.test")
    seen = hosts.requests()[before:]
    assert [r["body_bytes"] for r in seen] == [0, 200000]
    assert all(dict(r["headers"]).get("authorization") == SECRET for r in seen)
    assert all("x-sandbox-token" not in dict(r["headers"]) for r in seen)


def test_transform_applies_to_plain_http_too(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    before = len(hosts.requests())
    assert curl(runner, box, "http://api.transform.leap0.test/")[0] == 0
    assert dict(hosts.requests()[before]["headers"])["authorization"] == SECRET


def test_other_allowed_domains_are_not_intercepted(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    # The sandbox's CA is name-constrained to the transform domains and only they are
    # terminated: an allowed domain shows its own certificate, which the sandbox's default
    # trust does not know (the test CA is not in it).
    code, out = curl(runner, box, "https://allowed.leap0.test/")
    assert code == 60, out  # curl: peer certificate cannot be authenticated


def test_injected_value_leaves_no_trace_inside_or_on_the_host(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    assert curl(runner, box, "https://api.transform.leap0.test/")[0] == 0
    needle = SECRET.split()[1]
    # The hunt is a script that spells the value backwards, so it is in no cmdline itself.
    runner.files.write_file(box, "/tmp/hunt.py", HUNT.format(reversed_needle=needle[::-1]).encode())
    code, out = sh(runner, box, "python3 /tmp/hunt.py")
    assert (code, out) == (0, "searched"), out
    on_host = subprocess.run(["grep", "-rl", needle, str(runner.root_dir),
                              str(runner.runtime_dir)], capture_output=True, text=True)
    assert on_host.stdout == ""  # not in the state, the log or the CA bundle


def test_credential_goes_to_the_transform_host_whatever_address_or_host_header(
        runner: Runner, box: str, hosts: TestHosts) -> None:
    # Aim the TLS connection at the forbidden host and name it in the Host header: the
    # filter dialled the SNI's host, so the credential reaches that host and no other.
    before = len(hosts.requests())
    code, out = curl(runner, box, "--resolve api.transform.leap0.test:443:"
                     f"{hosts.address('forbidden')} -H 'Host: forbidden.leap0.test' "
                     "https://api.transform.leap0.test/")
    assert code == 0, out
    seen = hosts.requests()[before:]
    assert [r["ip"] for r in seen] == [hosts.address("transform")]
    assert dict(seen[0]["headers"])["authorization"] == SECRET


def test_even_an_allow_everything_cidr_reaches_neither_host_nor_other_sandboxes(
        runner: Runner, sandboxes: Sandboxes, hosts: TestHosts) -> None:
    wide = sandboxes.start(network_policy=custom(hosts, allow_cidrs=["0.0.0.0/0"]))
    other = sandboxes.start(network_policy=custom(hosts))
    with neighbours(runner, attacker=wide, victim=other) as (other_ip, gateway):
        assert curl(runner, wide, f"http://{hosts.address('forbidden')}/")[0] == 0  # allowed
        assert curl(runner, wide, f"-m 3 http://{gateway}:8082/")[0] != 0
        assert curl(runner, wide, f"-m 3 http://{other_ip}:8081/")[0] != 0


# --- Lifecycle -----------------------------------------------------------------------------


def _filter_pid(runner: Runner, sandbox_id: str) -> int:
    import json

    return int(json.loads((runner.root_dir / sandbox_id / "egress.json").read_text())["pid"])


def test_filter_runs_unprivileged_and_dies_with_the_sandbox(
        runner: Runner, sandboxes: Sandboxes, hosts: TestHosts) -> None:
    sandbox_id = sandboxes.start(network_policy=custom(hosts))
    pid = _filter_pid(runner, sandbox_id)
    status = Path(f"/proc/{pid}/status").read_text()
    assert "Uid:\t65534\t65534\t65534\t65534" in status
    # Its CPU and memory count against the sandbox's limits; the OOM killer takes it last.
    if runner.capabilities().cpu:
        assert f"/leap0/{runner.scope}/{sandbox_id}/egress" in \
            Path(f"/proc/{pid}/cgroup").read_text()
    if _has_capability(24):  # CAP_SYS_RESOURCE: some hosts (this CI's VM) withhold it
        assert Path(f"/proc/{pid}/oom_score_adj").read_text().strip() == "-900"
    runner.destroy(sandbox_id)
    assert sysutil.process_start_time(pid) is None
    assert leftovers(runner, sandbox_id) == []


def test_filters_are_forked_apart_from_their_fork_server_and_outlive_it(
        runner: Runner, sandboxes: Sandboxes, hosts: TestHosts) -> None:
    import os
    import signal

    from pulumi_leap0.runner import egress_filter

    first = sandboxes.start(network_policy=custom(hosts))
    second = sandboxes.start(network_policy=custom(hosts))  # back to back
    assert egress_filter._server is not None
    server = egress_filter._server[0].pid
    control = os.readlink(f"/proc/{server}/fd/0")
    assert control.startswith("socket:")
    for sandbox_id in (first, second):
        pid = _filter_pid(runner, sandbox_id)
        # A tenant that takes its filter over finds no way to the fork server (root): the
        # server's socket is not among the filter's descriptors, and it is its own session.
        fds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert control not in fds
        assert os.getsid(pid) == pid
    # Each filter has a CA of its own, though both come from the same pre-imported process.
    bundles = {sh(runner, b, "cat /run/leap0/ca-certificates.crt") for b in (first, second)}
    assert len(bundles) == 2 and all(code == 0 for code, _ in bundles)
    os.kill(server, signal.SIGKILL)
    egress_filter._server[0].wait(timeout=10)
    assert curl(runner, first, "https://api.transform.leap0.test/")[0] == 0
    third = sandboxes.start(network_policy=custom(hosts))  # a new server is started
    assert curl(runner, third, "http://allowed.leap0.test/")[0] == 0
    assert egress_filter._server[0].pid != server


def test_filter_survives_pause_and_a_new_runner(
        runner: Runner, sandboxes: Sandboxes, hosts: TestHosts) -> None:
    sandbox_id = sandboxes.start(network_policy=custom(hosts))
    runner.freeze(sandbox_id)
    runner.thaw(sandbox_id)
    assert curl(runner, sandbox_id, "http://allowed.leap0.test/")[0] == 0
    again = Runner(runner.root_dir, egress=runner.egress)  # a backend restart
    assert again.recover([sandbox_id]) == {sandbox_id}
    assert curl(again, sandbox_id, "http://allowed.leap0.test/")[0] == 0
    pid = _filter_pid(runner, sandbox_id)
    again.destroy(sandbox_id)
    assert sysutil.process_start_time(pid) is None
    assert leftovers(runner, sandbox_id) == []


def test_stop_and_start_gives_a_fresh_filter(
        runner: Runner, sandboxes: Sandboxes, hosts: TestHosts) -> None:
    sandbox_id = sandboxes.start(network_policy=custom(hosts))
    first = _filter_pid(runner, sandbox_id)
    runner.stop(sandbox_id)
    assert sysutil.process_start_time(first) is None
    runner.start(SandboxConfig(id=sandbox_id, template=TEMPLATE,
                               network_policy=custom(hosts)))
    assert _filter_pid(runner, sandbox_id) != first
    assert curl(runner, sandbox_id, "https://api.transform.leap0.test/")[0] == 0


def test_a_filter_that_cannot_start_fails_the_start_and_leaves_nothing(
        runner: Runner, hosts: TestHosts, monkeypatch: pytest.MonkeyPatch) -> None:
    from pulumi_leap0.runner import network

    monkeypatch.setattr(network.EgressConfig, "to_json", lambda self: "not json")
    sandbox_id = new_id()
    with pytest.raises(Exception, match="egress filter did not start"):
        runner.start(SandboxConfig(id=sandbox_id, template=TEMPLATE,
                                   network_policy=custom(hosts)))
    runner.destroy(sandbox_id)
    assert leftovers(runner, sandbox_id) == []


def test_a_dead_filter_cuts_the_sandbox_off_until_it_is_started_again(
        runner: Runner, sandboxes: Sandboxes, hosts: TestHosts) -> None:
    import os
    import signal

    policy = custom(hosts)
    sandbox_id = sandboxes.start(network_policy=policy)
    assert runner.reconcile_network(sandbox_id, policy) is False  # alive: nothing to do
    os.kill(_filter_pid(runner, sandbox_id), signal.SIGKILL)
    # Fail closed: the rules stay, so the traffic has nowhere to go.
    assert curl(runner, sandbox_id, "-m 3 http://allowed.leap0.test/")[0] != 0
    assert curl(runner, sandbox_id, f"-m 3 http://{hosts.address('forbidden')}/")[0] != 0
    assert runner.reconcile_network(sandbox_id, policy) is True
    assert curl(runner, sandbox_id, "http://allowed.leap0.test/")[0] == 0
    # The new filter's CA replaced the old one in the bundle the sandbox already trusts.
    assert curl(runner, sandbox_id, "https://api.transform.leap0.test/")[0] == 0
    assert curl(runner, sandbox_id, f"-m 3 http://{hosts.address('forbidden')}/")[0] != 0


def test_a_paused_sandbox_is_destroyed_with_its_filter_at_once(
        runner: Runner, sandboxes: Sandboxes, hosts: TestHosts) -> None:
    import time

    sandbox_id = sandboxes.start(network_policy=custom(hosts))
    pid = _filter_pid(runner, sandbox_id)
    runner.freeze(sandbox_id)  # the filter, in the sandbox's cgroup, is frozen too
    started = time.monotonic()
    runner.destroy(sandbox_id)
    assert time.monotonic() - started < 3.0
    assert sysutil.process_start_time(pid) is None
    assert leftovers(runner, sandbox_id) == []


def test_a_filter_that_died_while_paused_is_started_again_after_the_thaw(
        runner: Runner, sandboxes: Sandboxes, hosts: TestHosts) -> None:
    import os
    import signal
    import time

    policy = custom(hosts)
    sandbox_id = sandboxes.start(network_policy=policy)
    runner.freeze(sandbox_id)
    pid = _filter_pid(runner, sandbox_id)
    os.kill(pid, signal.SIGKILL)  # it dies on the thaw
    started = time.monotonic()
    assert runner.reconcile_network(sandbox_id, policy) is False  # frozen: not now
    assert time.monotonic() - started < 1.0
    runner.thaw(sandbox_id)  # right after, the old filter may still be dying: it counts
    assert runner.reconcile_network(sandbox_id, policy) is True  # as dead all the same
    assert curl(runner, sandbox_id, "http://allowed.leap0.test/")[0] == 0
