"""Every TCP connection the sandbox opens (outside ``allow_cidrs``) arrives here.

Per connection: peek at the first bytes without consuming them, take the name (TLS SNI or
HTTP Host), and refuse unless the policy allows it. An allowed name is dialled by name, on
the port the program asked for: the address it connected to is never used, so a raw IP, a
spoofed ``/etc/hosts`` or a forged SNI leads to the named host or nowhere. Transform
domains are served through ``http.relay``; everything else passes as an opaque tunnel.

What this cannot serve by name: protocols where the server speaks first (SSH, SMTP,
databases) carry no name to read, and UDP (QUIC) is dropped, so clients fall back to TCP.
Such hosts belong in ``allow_cidrs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from typing import TYPE_CHECKING, cast

from pulumi_leap0 import spec
from pulumi_leap0.runner.egress import sniff
from pulumi_leap0.runner.egress.http import Stream, relay
from pulumi_leap0.runner.egress.resolve import Resolver

if TYPE_CHECKING:  # cryptography is imported only by filters that terminate TLS
    from pulumi_leap0.runner.egress.authority import CertificateAuthority

log = logging.getLogger("leap0.egress")

#: A program that connects and says nothing for this long is dropped.
HEAD_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
#: Connections whose first bytes are being read at once; the others wait their turn.
MAX_READING = 256
_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
_DEFAULT_PORTS = {"tls": 443, "http": 80}


class Proxy:
    def __init__(self, policy: spec.NetworkPolicy, resolver: Resolver,
                 authority: CertificateAuthority | None, upstream_tls: ssl.SSLContext) -> None:
        self._policy = policy
        self._resolver = resolver
        self._authority = authority
        self._upstream_tls = upstream_tls
        self._tasks: set[asyncio.Task[None]] = set()
        # Connections still being read: a sandbox opening thousands and saying nothing
        # waits on this, not on the host's CPU.
        self._reading = asyncio.Semaphore(MAX_READING)

    async def serve(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        while True:
            client, _ = await loop.sock_accept(listener)
            task = asyncio.ensure_future(self._handle(client))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            client.setblocking(False)
            # Small writes must leave at once: with Nagle on, every request of a keep-alive
            # connection waited for the peer's delayed ACK (~40 ms).
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with self._reading:
                head = await _peek_head(client)
            kind = sniff.kind_of(head)
            name = (sniff.server_name(head) if kind == "tls"
                    else sniff.http_host(head) if kind == "http" else None)
            port = _original_port(client) or _DEFAULT_PORTS.get(kind, 0)
            if name is None or not self._policy.allows(name):
                log.info("refused %s connection to %s port %s (not in the policy)",
                         kind, name or "an unnamed host", port)
                return
            upstream = await self._dial(name, port)
            if upstream is None:
                return
            rule = self._policy.transform_for(name)
            if rule is None:
                log.debug("tunnel %s %s:%s", kind, name, port)
                await _tunnel(client, upstream)
            else:
                log.debug("transform %s %s:%s", kind, name, port)
                await self._transform(client, upstream, name, kind, rule)
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            log.debug("connection ended: %s", type(exc).__name__)
        except Exception:  # one bad connection must not stop the filter
            log.exception("connection failed")
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    async def _dial(self, name: str, port: int) -> socket.socket | None:
        loop = asyncio.get_running_loop()
        for address in await self._resolver.addresses(name):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await loop.sock_connect(sock, (address, port))
                return sock
            except (TimeoutError, OSError):
                sock.close()
        log.info("could not reach %s:%s", name, port)
        return None

    async def _transform(self, client: socket.socket, upstream: socket.socket, name: str,
                         kind: str, rule: spec.TransformRule) -> None:
        if kind == "tls":
            assert self._authority is not None
            sandbox = await _sandbox_stream(client, self._authority.server_context(name))
            server = await _upstream_stream(upstream, self._upstream_tls, name)
        elif kind == "http":
            sandbox, server = await _sandbox_stream(client), await _upstream_stream(upstream)
        else:
            return
        try:
            await relay(sandbox, server, rule)
        finally:
            for stream in (sandbox, server):
                stream.writer.close()
            for stream in (sandbox, server):  # closed for good before the sockets are
                with contextlib.suppress(OSError, ssl.SSLError, ConnectionError):
                    await stream.writer.wait_closed()


async def _peek_head(sock: socket.socket) -> bytes:
    """The first bytes the program sent, still unread in the socket."""
    delay = 0.001
    async with asyncio.timeout(HEAD_TIMEOUT_S):
        while True:
            try:
                head = sock.recv(sniff.MAX_HEAD, socket.MSG_PEEK)
            except BlockingIOError:  # nothing yet: usually the request is already there
                await _readable(sock)
                continue
            if not head or sniff.is_complete(head) or len(head) >= sniff.MAX_HEAD:
                return head
            # The rest of the head is on its way. The socket stays readable while what
            # came is unread, so wait, longer each time: a program that sends half a head
            # and stalls must not make the filter spin on the host's CPU.
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def _original_port(sock: socket.socket) -> int:
    """The port the program connected to, before nftables redirected it here (0: unknown)."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)
    except OSError:
        return 0
    port: int = struct.unpack_from("!H", raw, 2)[0]
    return 0 if port == sock.getsockname()[1] else port


async def _tunnel(client: socket.socket, upstream: socket.socket) -> None:
    """Relay bytes both ways until both sides are done. Transports and callbacks, not
    coroutines: a tunnel carries most of the traffic, and a coroutine step per chunk cost
    more than the relaying itself."""
    loop = asyncio.get_running_loop()
    sandbox_side, upstream_side = _Relay(loop), _Relay(loop)
    sandbox_side.peer, upstream_side.peer = upstream_side, sandbox_side
    try:
        await loop.connect_accepted_socket(lambda: sandbox_side, client)
        await loop.create_connection(lambda: upstream_side, sock=upstream)
    except BaseException:
        sandbox_side.close()
        raise
    finally:
        # The transports own the sockets now: return only once each has let go of its
        # socket, or the caller's close could pull a descriptor from under a transport
        # still flushing, and a new connection could inherit its number.
        for side in (sandbox_side, upstream_side):
            if side.transport is not None:
                await side.closed


class _Relay(asyncio.Protocol):
    """One side of a tunnel: what it receives is written to its peer at once; when the
    peer cannot keep up, this side stops reading (and so does TCP, back to the sender)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.closed: asyncio.Future[None] = loop.create_future()
        self.peer: _Relay | None = None
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # arrived before the peer's transport existed
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        assert self.peer is not None
        if self.peer.closed.done():  # the other side is already gone
            self.transport.close()
            return
        for data in self.peer.pending:
            self.transport.write(data)
        self.peer.pending.clear()
        if self.peer.ended and self.transport.can_write_eof():
            self.transport.write_eof()

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        if self.peer.transport is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        assert self.peer is not None
        if self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        if self.peer.ended:
            self.close()
            self.peer.close()
        return True  # half-closed: the other direction may still be talking

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.peer is not None:
            self.peer.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _streams() -> tuple[asyncio.StreamReader, asyncio.StreamReaderProtocol]:
    reader = asyncio.StreamReader(limit=sniff.MAX_HEAD * 4)
    return reader, asyncio.StreamReaderProtocol(reader)


async def _sandbox_stream(sock: socket.socket, tls: ssl.SSLContext | None = None) -> Stream:
    """The accepted connection from the sandbox (TLS terminated here when ``tls``)."""
    loop = asyncio.get_running_loop()
    reader, protocol = _streams()
    transport, _ = await asyncio.wait_for(
        loop.connect_accepted_socket(lambda: protocol, sock, ssl=tls), CONNECT_TIMEOUT_S)
    return Stream(reader, asyncio.StreamWriter(transport, protocol, reader, loop))


async def _upstream_stream(sock: socket.socket, tls: ssl.SSLContext | None = None,
                           server_hostname: str | None = None) -> Stream:
    """The connection dialled upstream (verified TLS to ``server_hostname`` when ``tls``)."""
    loop = asyncio.get_running_loop()
    reader, protocol = _streams()
    transport, _ = await asyncio.wait_for(
        loop.create_connection(lambda: protocol, sock=sock, ssl=tls,
                               server_hostname=server_hostname), CONNECT_TIMEOUT_S)
    return Stream(reader, asyncio.StreamWriter(transport, protocol, reader, loop))
