"""Test hosts for network policy: named HTTP/HTTPS servers and a DNS server of our own.

``TestHosts`` makes a network namespace behind a veth (10.251.x.0/28 on this machine only),
gives it one address per host, runs ``server.py`` there (HTTP, HTTPS with a test CA, UDP
echo), and answers DNS for the names below from a thread on the host end of the veth. A
runner pointed at ``resolver`` and trusting ``ca_file`` sees them as the internet.
Nothing ever leaves this machine.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import trustme

DOMAIN = "leap0.test"
# host -> last octet of its address; names below are what the DNS server answers.
HOSTS = {"allowed": 2, "forbidden": 3, "cidr": 4, "transform": 5, "wild": 6}
ALIASES = {  # extra names, and names that resolve where no sandbox may go
    f"api.wild.{DOMAIN}": "wild",
    f"deep.api.wild.{DOMAIN}": "wild",
    f"api.transform.{DOMAIN}": "transform",
}
REBIND = {f"rebind.{DOMAIN}": "127.0.0.1", f"metadata.{DOMAIN}": "169.254.169.254"}


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


class TestHosts:
    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        tag = secrets.token_hex(3)
        self.netns = f"l0hosts-{tag}"
        self.host_if, self.peer_if = f"l0hh{tag}", f"l0hp{tag}"
        self.prefix = f"10.251.{secrets.randbelow(200) + 10}"
        self.gateway = f"{self.prefix}.1"
        self.addresses = {f"{name}.{DOMAIN}": f"{self.prefix}.{octet}"
                          for name, octet in HOSTS.items()}
        for alias, host in ALIASES.items():
            self.addresses[alias] = self.addresses[f"{host}.{DOMAIN}"]
        self.addresses.update(REBIND)
        self.log_file = workdir / "requests.jsonl"
        self.ca = trustme.CA()
        self.ca_file = workdir / "test-ca.pem"
        self._server: subprocess.Popen[bytes] | None = None
        self._dns: socket.socket | None = None
        self.resolver = ""

    def address(self, host: str) -> str:
        return self.addresses[f"{host}.{DOMAIN}" if "." not in host else host]

    def start(self) -> TestHosts:
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        chain = self.workdir / "hosts-chain.pem"
        names = [*self.addresses, f"*.wild.{DOMAIN}"]
        self.ca.issue_cert(*names).private_key_and_cert_chain_pem.write_to_path(str(chain))
        self.log_file.touch()
        _run("ip", "netns", "add", self.netns)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if,
             "netns", self.netns)
        _run("ip", "addr", "add", f"{self.gateway}/28", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        for octet in HOSTS.values():
            _run("ip", "-n", self.netns, "addr", "add", f"{self.prefix}.{octet}/28", "dev",
                 self.peer_if)
        _run("ip", "-n", self.netns, "link", "set", self.peer_if, "up")
        _run("ip", "-n", self.netns, "link", "set", "lo", "up")
        _run("ip", "-n", self.netns, "route", "add", "default", "via", self.gateway)
        self._server = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, sys.executable,
             str(Path(__file__).with_name("server.py")), str(self.log_file), str(chain),
             *(f"{self.prefix}.{octet}" for octet in HOSTS.values())],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self._server.stdout is not None
        if self._server.stdout.readline().strip() != b"ready":
            raise RuntimeError("the test hosts' server did not start")
        self._dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._dns.bind((self.gateway, 0))
        self.resolver = f"{self.gateway}:{self._dns.getsockname()[1]}"
        threading.Thread(target=self._answer_dns, args=(self._dns,), daemon=True).start()
        return self

    def _answer_dns(self, sock: socket.socket) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            question = query.question[0]
            address = self.addresses.get(question.name.to_text(omit_final_dot=True))
            if address is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.A:
                response.answer.append(dns.rrset.from_text(question.name, 5, "IN", "A",
                                                           address))
            sock.sendto(response.to_wire(), peer)

    def requests(self) -> list[dict[str, Any]]:
        """Every request the hosts received so far, oldest first, as they saw it."""
        return [json.loads(line) for line in self.log_file.read_text().splitlines()]

    def close(self) -> None:
        if self._dns is not None:
            self._dns.close()
        if self._server is not None:
            self._server.kill()
            self._server.wait()
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "delete", self.host_if], capture_output=True)
