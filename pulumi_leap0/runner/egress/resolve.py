"""Host-side name resolution for the filter, and the addresses it never dials.

A name the policy allows can still resolve to somewhere a sandbox must not go (DNS
rebinding: ``allowed.example`` answering ``127.0.0.1``, or the cloud metadata address), so
every address is checked before it is used, not only before it is answered. The mounts
(``runner/mounts.py``) check their endpoints with the same guard, and ``lookup``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable

import dns.asyncresolver
import dns.exception
import dns.resolver

#: Answers are reused this long: a sandbox opening many connections pays for one lookup.
CACHE_SECONDS = 30.0


class AddressGuard:
    """Loopback, link-local (metadata), multicast, this host's own addresses and the
    sandbox networks are never dialled, whatever a name resolves to, unless an address is
    in ``allowed_cidrs``: an operator's explicit exception (an S3 server on this host)."""

    def __init__(self, forbidden_cidrs: Iterable[str], allowed_cidrs: Iterable[str] = ()) -> None:
        self._forbidden = [ipaddress.ip_network(c) for c in forbidden_cidrs]
        self._allowed = [ipaddress.ip_network(c) for c in allowed_cidrs]
        self._local: dict[str, bool] = {}

    def allows(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        if any(ip in net for net in self._allowed):
            return True
        return self.allows_unless_excepted(address)

    def allows_unless_excepted(self, address: str) -> bool:
        """What the rules alone say, ``allowed_cidrs`` left out."""
        ip = ipaddress.ip_address(address)
        if (ip.version != 4 or ip.is_loopback or ip.is_link_local or ip.is_multicast
                or ip.is_unspecified or ip.is_reserved):
            return False
        if any(ip in net for net in self._forbidden):
            return False
        return not self._is_local(address)

    def _is_local(self, address: str) -> bool:
        # Only an address of this host's own interfaces can be bound without IP_FREEBIND.
        if address not in self._local:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind((address, 0))
                    self._local[address] = True
                except OSError:
                    self._local[address] = False
        return self._local[address]


def _point(resolver: dns.resolver.BaseResolver, server: str) -> None:
    host, _, port = server.rpartition(":")
    resolver.nameservers = [host]
    resolver.port = int(port)
    resolver.lifetime = 5.0


def lookup(name: str, server: str | None) -> list[str]:
    """The IPv4 addresses of ``name`` now, from ``server`` ("ip:port") or else the host's
    resolver, unchecked and uncached: for a caller that checks them and then pins them."""
    if server:
        resolver = dns.resolver.Resolver(configure=False)
        _point(resolver, server)
        try:
            return [rdata.address for rdata in resolver.resolve(name, "A")]
        except (dns.exception.DNSException, OSError):
            return []
    try:
        infos = socket.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Resolver:
    """IPv4 addresses of a name, from ``server`` ("ip:port") or else the host's resolver."""

    def __init__(self, server: str | None, guard: AddressGuard) -> None:
        self._guard = guard
        self._dns: dns.asyncresolver.Resolver | None = None
        if server:
            self._dns = dns.asyncresolver.Resolver(configure=False)
            _point(self._dns, server)
        self._cache: dict[str, tuple[float, list[str]]] = {}

    async def addresses(self, name: str) -> list[str]:
        """The dialable addresses of ``name``; empty when it has none (or none allowed)."""
        name = name.lower().rstrip(".")
        cached = self._cache.get(name)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        found = [a for a in await self._lookup(name) if self._guard.allows(a)]
        self._cache[name] = (time.monotonic() + CACHE_SECONDS, found)
        return found

    async def _lookup(self, name: str) -> list[str]:
        if self._dns is not None:
            try:
                answer = await self._dns.resolve(name, "A")
            except (dns.exception.DNSException, OSError):
                return []
            return [rdata.address for rdata in answer]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                name, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
        except OSError:
            return []
        return list(dict.fromkeys(str(info[4][0]) for info in infos))
