"""The test hosts' server: HTTP on 80, HTTPS on 443 (test CA), a UDP echo on 5353.

Run inside the test hosts' network namespace: ``python server.py LOG CHAIN ADDRESS...``.
Each request is answered with ``<address it arrived at> <Host header>`` and recorded in LOG
as a JSON line with its headers, so a test can see what a host received without the
sandbox seeing it. asyncio and h11 keep it fast enough to measure a filter against (see bench/).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys

import h11

LOG, CHAIN, ADDRESSES = sys.argv[1], sys.argv[2], sys.argv[3:]


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    local_ip = writer.get_extra_info("sockname")[0]
    tls = writer.get_extra_info("ssl_object") is not None

    async def next_event() -> object:
        while (event := conn.next_event()) is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        return event

    try:
        while isinstance(request := await next_event(), h11.Request):
            body = 0
            while isinstance(event := await next_event(), h11.Data):
                body += len(event.data)
            if not isinstance(event, h11.EndOfMessage):
                return
            headers = [[k.decode(), v.decode()] for k, v in request.headers]
            host = next((v for k, v in headers if k == "host"), "")
            with open(LOG, "a") as log:
                log.write(json.dumps({"ip": local_ip, "tls": tls, "host": host,
                                      "headers": headers, "body_bytes": body}) + "\n")
            reply = f"{local_ip} {host}\n".encode()
            writer.write(conn.send(h11.Response(status_code=200, headers=[
                ("content-length", str(len(reply))), ("content-type", "text/plain")])))
            writer.write(conn.send(h11.Data(data=reply)) + conn.send(h11.EndOfMessage()))
            await writer.drain()
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (OSError, h11.ProtocolError):
        return
    finally:
        writer.close()


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"pong", addr)  # type: ignore[attr-defined]


async def main() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(CHAIN)
    await asyncio.start_server(serve, "0.0.0.0", 80, backlog=1024)
    await asyncio.start_server(serve, "0.0.0.0", 443, ssl=context, backlog=1024)
    for address in ADDRESSES:  # one socket each, so a reply comes from the address asked
        await asyncio.get_running_loop().create_datagram_endpoint(
            Echo, local_addr=(address, 5353))
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
