"""The egress filter's parts on their own: what it reads from first bytes, which headers
it sends, which certificates its CA can vouch for, which addresses it refuses to dial.
End to end (real sandboxes, real hosts) is tests/runner/test_egress.py."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading

import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulumi_leap0 import spec
from pulumi_leap0.runner.egress import sniff
from pulumi_leap0.runner.egress.authority import CertificateAuthority
from pulumi_leap0.runner.egress.http import rewrite
from pulumi_leap0.runner.egress.nameserver import DnsResponder
from pulumi_leap0.runner.egress.resolve import AddressGuard, Resolver


def client_hello(server_hostname: str | None) -> bytes:
    """The first bytes a real TLS client (OpenSSL, via ssl) sends."""
    context = ssl.create_default_context()
    context.check_hostname = server_hostname is not None
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(),
                           server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# --- sniff ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["api.example.com", "a.b.c.leap0.test", "x" * 63 + ".io"])
def test_sni_is_read_from_a_real_client_hello(name: str) -> None:
    head = client_hello(name)
    assert sniff.kind_of(head) == "tls" and sniff.is_complete(head)
    assert sniff.server_name(head) == name


def test_client_hello_without_sni_or_cut_short_names_nothing() -> None:
    assert sniff.server_name(client_hello(None)) is None
    head = client_hello("api.example.com")
    assert not sniff.is_complete(head[:40])
    assert sniff.server_name(head[:40]) is None


@given(st.binary(max_size=600))
def test_any_bytes_are_read_without_error(data: bytes) -> None:
    for head in (data, b"\x16\x03\x01" + data):
        assert sniff.server_name(head) is None or isinstance(sniff.server_name(head), str)
        assert sniff.http_host(head) is None or isinstance(sniff.http_host(head), str)
        sniff.is_complete(head)


@pytest.mark.parametrize(("head", "host"), [
    (b"GET / HTTP/1.1\r\nHost: api.example.com\r\n\r\n", "api.example.com"),
    (b"GET / HTTP/1.1\r\nhost: API.example.com:8080\r\n\r\n", "API.example.com"),
    (b"GET http://x.test/ HTTP/1.1\r\nHost: y.test\r\n\r\n", "y.test"),  # Host decides
    (b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", None),
    (b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", None),
    (b"GET / HTTP/1.0\r\n\r\n", None),
    (b"NOT HTTP AT ALL\r\n\r\n", None),
])
def test_http_host(head: bytes, host: str | None) -> None:
    assert sniff.kind_of(head) == "http" and sniff.is_complete(head)
    assert sniff.http_host(head) == host


def test_the_policy_decides_on_the_name_the_filter_read() -> None:
    policy = spec.NetworkPolicy(mode="custom", allow_domains=["*.example.com"])
    head = b"GET / HTTP/1.1\r\nHost: API.Example.com:443\r\n\r\n"
    assert policy.allows(sniff.http_host(head) or "")
    assert not policy.allows(sniff.server_name(client_hello("example.com")) or "")


# --- header rewriting ----------------------------------------------------------------------


def test_rewrite_strips_then_injects_case_insensitively() -> None:
    rule = spec.TransformRule(domain="api.example.com",
                              inject_headers={"Authorization": "Bearer real"},
                              strip_headers=["Cookie"])
    sent = [(b"Host", b"api.example.com"), (b"AUTHORIZATION", b"Bearer sandbox"),
            (b"cookie", b"a=1"), (b"Expect", b"100-continue"), (b"X-Kept", b"1")]
    assert rewrite(sent, rule) == [(b"Host", b"api.example.com"), (b"X-Kept", b"1"),
                                   (b"authorization", b"Bearer real")]


# --- the per-sandbox CA --------------------------------------------------------------------


def handshake(authority: CertificateAuthority, presented: str, asked: str,
              trusted: CertificateAuthority | None = None) -> None:
    """A TLS handshake between the CA's server context for ``presented`` and a client that
    trusts only ``trusted`` (default: the same CA) and asks for ``asked``; raises on a
    verification failure."""
    server_sock, client_sock = socket.socketpair()
    server_context = authority.server_context(presented)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_context.wrap_socket(server_sock, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        client_context = ssl.create_default_context(
            cadata=(trusted or authority).pem().decode())
        with client_context.wrap_socket(client_sock, server_hostname=asked) as tls:
            tls.sendall(b"x")
    finally:
        client_sock.close()
        thread.join(5)


def test_the_ca_vouches_for_transform_domains_only() -> None:
    authority = CertificateAuthority(["api.example.com", "*.internal.test"])
    handshake(authority, "api.example.com", "api.example.com")
    handshake(authority, "a.internal.test", "a.internal.test")
    # Even a certificate the CA itself signs for another name is refused by the client:
    # the CA is name-constrained, so a stolen copy could not impersonate other hosts.
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(authority, "bank.example.org", "bank.example.org")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(authority, "api.example.com", "other.example.com")


def test_each_sandbox_gets_its_own_ca() -> None:
    first, second = CertificateAuthority(["a.test"]), CertificateAuthority(["a.test"])
    assert first.pem() != second.pem()
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(first, "a.test", "a.test", trusted=second)


# --- addresses never dialled ---------------------------------------------------------------


@pytest.mark.parametrize(("address", "dialled"), [
    ("93.184.216.34", True), ("10.251.3.4", True),
    ("127.0.0.1", False), ("127.8.9.10", False),  # the host's own loopback
    ("169.254.169.254", False),  # cloud metadata
    ("10.201.7.2", False),  # another sandbox
    ("0.0.0.0", False), ("224.0.0.1", False), ("240.0.0.1", False),
])
def test_address_guard(address: str, dialled: bool) -> None:
    assert AddressGuard(["10.201.0.0/16"]).allows(address) is dialled


def test_address_guard_refuses_this_hosts_own_addresses() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 9))  # no packet is sent: this only picks a route
        own = probe.getsockname()[0]
    assert not AddressGuard([]).allows(own)


# --- the sandbox's resolver ----------------------------------------------------------------


def ask(name: str, rdtype: str = "A", extra_question: bool = False) -> dns.message.Message:
    policy = spec.NetworkPolicy(mode="custom", allow_domains=["allowed.test"])
    responder = DnsResponder(policy, Resolver(None, AddressGuard([])))
    query = dns.message.make_query(name, rdtype)
    if extra_question:
        query.question.append(dns.message.make_query("other.test", "A").question[0])
    return asyncio.run(responder.answer(query))


def test_resolver_refuses_names_outside_the_policy_without_asking_anyone() -> None:
    assert ask("forbidden.test").rcode() == dns.rcode.NXDOMAIN
    assert ask("sub.allowed.test").rcode() == dns.rcode.NXDOMAIN
    assert ask("allowed.test", extra_question=True).rcode() == dns.rcode.REFUSED
    ipv6 = ask("allowed.test", "AAAA")
    assert ipv6.rcode() == dns.rcode.NOERROR and ipv6.answer == []
    assert ipv6.question[0].rdtype == dns.rdatatype.AAAA


def test_the_filter_log_stops_at_its_budget() -> None:
    import logging

    from pulumi_leap0.runner.egress.__main__ import _Budget

    budget = _Budget(1000)
    records = [logging.LogRecord("leap0.egress", logging.INFO, __file__, 1,
                                 "refused http connection to %s", (f"host{i}.test",), None)
               for i in range(100)]
    kept = [r for r in records if budget.filter(r)]
    assert 5 < len(kept) < 30
    assert kept[-1].getMessage() == "log budget spent: nothing more is logged"
