"""The sandbox's resolver: A records for the names the policy allows, NXDOMAIN for the rest.

Every DNS query the sandbox sends, to whatever server, arrives here (nftables redirects
port 53). The answers are the real addresses, so programs behave as they would outside;
connections to them still pass the proxy, which dials by name.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from pulumi_leap0 import spec
from pulumi_leap0.runner.egress.resolve import Resolver

log = logging.getLogger("leap0.egress")

TTL_SECONDS = 30


class DnsResponder(asyncio.DatagramProtocol):
    def __init__(self, policy: spec.NetworkPolicy, resolver: Resolver) -> None:
        self._policy = policy
        self._resolver = resolver
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's datagram transport does not subclass DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        task = asyncio.ensure_future(self._reply(data, addr))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _reply(self, data: bytes, addr: tuple[str | object, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        response = await self.answer(query)
        if self._transport is not None:
            self._transport.sendto(response.to_wire(), addr)

    async def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if len(query.question) != 1 or query.question[0].rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True)
        if not self._policy.allows(name):
            log.info("dns refused %s (not in the policy)", name)
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        if question.rdtype == dns.rdatatype.A:
            addresses = await self._resolver.addresses(name)
            if addresses:
                response.answer.append(dns.rrset.from_text_list(
                    question.name, TTL_SECONDS, dns.rdataclass.IN, dns.rdatatype.A, addresses))
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
        # Other types (AAAA above all) get an empty answer: the sandbox speaks IPv4 only.
        return response
