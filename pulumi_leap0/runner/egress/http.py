"""The HTTP/1.1 relay for transform domains: each request's headers rewritten, the rest as is.

h11 frames both sides (bodies, chunking, keep-alive, 100-continue); this module only
decides what to change. ``strip_headers`` go first, then ``inject_headers`` replace any
header of the same name the sandbox sent, so a program can neither see nor override them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import h11

from pulumi_leap0 import spec

_READ_SIZE = 64 * 1024


@dataclass
class Stream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, conn: h11.Connection, event: h11._events.Event) -> None:
        data = conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def next_event(self, conn: h11.Connection) -> object:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await self.reader.read(_READ_SIZE))


def rewrite(headers: list[tuple[bytes, bytes]], rule: spec.TransformRule
            ) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``rule`` applied; names are compared case-insensitively."""
    dropped = {n.encode() for n in rule.strip_headers} | {n.encode() for n in
                                                          rule.inject_headers}
    dropped.add(b"expect")  # 100-continue is answered here, not upstream
    kept = [(name, value) for name, value in headers if name.lower() not in dropped]
    return kept + [(n.encode(), v.encode()) for n, v in rule.inject_headers.items()]


async def relay(sandbox: Stream, upstream: Stream, rule: spec.TransformRule) -> None:
    """Serve requests from ``sandbox`` by forwarding them to ``upstream`` until either ends."""
    inbound = h11.Connection(h11.SERVER)  # the sandbox's requests
    outbound = h11.Connection(h11.CLIENT)  # our requests upstream
    while True:
        request = await sandbox.next_event(inbound)
        if not isinstance(request, h11.Request):
            return  # closed, or a protocol error h11 already refused
        if inbound.client_is_waiting_for_100_continue:
            await sandbox.send(inbound, h11.InformationalResponse(status_code=100, headers=[]))
        await upstream.send(outbound, h11.Request(
            method=request.method, target=request.target,
            headers=rewrite(list(request.headers), rule), http_version=request.http_version))
        await _forward_body(sandbox, inbound, upstream, outbound)
        while True:
            response = await upstream.next_event(outbound)
            if isinstance(response, h11.InformationalResponse):
                await sandbox.send(inbound, response)
                if response.status_code == 101:
                    await _switch(sandbox, inbound, upstream, outbound)
                    return
                continue
            if not isinstance(response, h11.Response):
                return
            await sandbox.send(inbound, response)
            break
        await _forward_body(upstream, outbound, sandbox, inbound)
        if h11.MUST_CLOSE in (inbound.our_state, outbound.our_state, outbound.their_state):
            return
        try:
            inbound.start_next_cycle()
            outbound.start_next_cycle()
        except h11.LocalProtocolError:
            return


async def _forward_body(source: Stream, source_conn: h11.Connection, sink: Stream,
                        sink_conn: h11.Connection) -> None:
    while True:
        event = await source.next_event(source_conn)
        if isinstance(event, h11.Data):
            await sink.send(sink_conn, event)
        elif isinstance(event, h11.EndOfMessage):
            await sink.send(sink_conn, event)
            return
        else:
            raise ConnectionError("the message ended early")


async def _switch(sandbox: Stream, inbound: h11.Connection, upstream: Stream,
                  outbound: h11.Connection) -> None:
    """After a 101 (WebSocket and the like) both sides speak their own protocol: pipe it."""
    for data, writer in ((inbound.trailing_data[0], upstream.writer),
                         (outbound.trailing_data[0], sandbox.writer)):
        if data:
            writer.write(data)
    pipes = [asyncio.ensure_future(_pipe(sandbox.reader, upstream.writer)),
             asyncio.ensure_future(_pipe(upstream.reader, sandbox.writer))]
    try:
        await asyncio.gather(*pipes)
    finally:
        for pipe in pipes:
            pipe.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(_READ_SIZE):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
