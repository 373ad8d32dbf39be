"""Preview URLs: a request whose Host names a sandbox's port is served by that port.

Two host forms under the sandbox domain (``serve --sandbox-domain``, the SDK's
``LEAP0_SANDBOX_DOMAIN``), and nothing else of that domain:

* ``{sandbox_id}-{port}.{domain}`` (the SDK's ``invoke_url(port=...)``): with the API key of
  the sandbox's organization, which is not passed on to the sandbox;
* ``{token}.{domain}`` (a presigned URL): the token alone, until it expires or is deleted.

Either is a 404 for a sandbox or token that is not the caller's. A request to such a host is
answered here and never reaches the API's routes, whatever its path or request target.

The port is reached on the sandbox's *own* loopback, whatever its network policy: the
connection is made in its network namespace (``runner/ingress.py``), so it can reach nothing
but the sandbox, and a ``deny-all`` sandbox gets ingress yet still cannot dial out.
HTTP/1.1 to the sandbox is httpcore's, over those sockets (``_SandboxNetwork``): a pool per
organization, so one organization's open connections never hold another's back, and each
read, write and connect is bounded in time (``spec.PREVIEW_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import re
import select
import socket
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import httpcore
from starlette.requests import HTTPConnection
from starlette.types import Message, Receive, Scope, Send

from pulumi_leap0 import spec
from pulumi_leap0.backend import runtime
from pulumi_leap0.backend.auth import Authenticator
from pulumi_leap0.backend.errors import ApiError
from pulumi_leap0.backend.lifecycle import Lifecycle
from pulumi_leap0.backend.store import SandboxRecord

log = logging.getLogger("leap0.backend")

PORT_LABEL = re.compile(rf"^({re.escape(spec.SANDBOX_ID_PREFIX)}[a-z0-9]+)-([0-9]{{1,5}})$",
                        re.ASCII)
TOKEN_LABEL = re.compile(r"^[0-9a-f]{32}$", re.ASCII)
#: Connections to sandboxes one organization may hold open at once (in use or idle).
CONNECTIONS_PER_ORG = 32
KEEPALIVE_S = 10.0
#: Headers of one hop only (RFC 9110 7.6.1), never passed on either way.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"upgrade", b"proxy-authorization", b"proxy-authenticate"})
API_KEY_HEADERS = frozenset({b"authorization", b"leap0-authorization"})
_TIMEOUTS = {"connect": float(spec.PREVIEW_CONNECT_TIMEOUT_S),
             "read": float(spec.PREVIEW_READ_TIMEOUT_S),
             "write": float(spec.PREVIEW_READ_TIMEOUT_S),
             "pool": float(spec.PREVIEW_CONNECT_TIMEOUT_S)}

#: The sandbox the current request goes to: the only one its connections may be made to.
_target: contextvars.ContextVar[SandboxRecord | None] = contextvars.ContextVar(
    "leap0_preview_target", default=None)


@dataclass(frozen=True, slots=True)
class Target:
    sandbox: SandboxRecord
    port: int
    #: The request authenticated with the API key: the key is not the sandbox's to see.
    strip_api_key: bool


class Preview:
    """The preview side of the server, for one sandbox domain."""

    def __init__(self, domain: str, lifecycle: Lifecycle, auth: Authenticator, *,
                 scheme: str = "http") -> None:
        self.domain = domain.strip().strip(".").lower()
        self.suffix = "." + self.domain
        #: What presigned URLs are given with: https when the server has TLS.
        self.scheme = scheme
        self.lifecycle = lifecycle
        self.auth = auth
        self._pools: dict[str, httpcore.AsyncConnectionPool] = {}

    def label(self, host: str) -> str | None:
        """The one label before the sandbox domain in ``host``, or None for another host.
        ``host`` is compared whole: ``x.<domain>@evil`` or ``x.<domain>.evil`` is not it."""
        host = host.lower()
        if not host.endswith(self.suffix):
            return None
        label = host[: -len(self.suffix)]
        return label if label and "." not in label else None

    def presigned_url(self, token: str) -> str:
        return f"{self.scheme}://{token}{self.suffix}/"

    def is_preview(self, label: str) -> bool:
        return bool(PORT_LABEL.match(label) or TOKEN_LABEL.match(label))

    async def serve(self, label: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request to a preview host, every error included."""
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            target = await self._resolve(label, scope)
            await self._forward(target, scope, receive, tracked)
        except ApiError as exc:
            if not started:
                await reply(send, exc.status, exc.message)
        except Exception:
            log.exception("preview request failed")
            if not started:
                await reply(send, 502, "the sandbox's answer could not be relayed")

    async def _resolve(self, label: str, scope: Scope) -> Target:
        store = self.lifecycle.store
        by_port = PORT_LABEL.match(label)
        if by_port is None:
            found = store.presigned_target(label, time.time())
            record = store.get_sandbox(found[0]) if found else None
            if found is None or record is None:
                raise ApiError(404, "no such preview URL: it expired, was deleted, or never "
                                    "existed")
            return Target(record, found[1], strip_api_key=False)
        org = self.auth.org_of(HTTPConnection(scope))
        record = self.lifecycle.get(org, by_port.group(1))
        port = int(by_port.group(2))
        if not 1 <= port <= 65535:
            raise ApiError(404, "not found: a preview host names a port from 1 to 65535")
        return Target(record, port, strip_api_key=True)

    def _pool(self, org: str) -> httpcore.AsyncConnectionPool:
        pool = self._pools.get(org)
        if pool is None:
            pool = self._pools[org] = httpcore.AsyncConnectionPool(
                max_connections=CONNECTIONS_PER_ORG, keepalive_expiry=KEEPALIVE_S,
                network_backend=_SandboxNetwork(self.lifecycle))
        return pool

    async def _forward(self, target: Target, scope: Scope, receive: Receive,
                       send: Send) -> None:
        record = target.sandbox
        # Read by _resolve with no await since: a running one needs no second read. A paused
        # sandbox resumes, as for exec.
        if record.state != spec.SandboxState.RUNNING:
            record = await self.lifecycle.ensure_running(record)
        drop = HOP_BY_HOP | (API_KEY_HEADERS if target.strip_api_key else frozenset())
        headers = [(name, value) for name, value in scope["headers"] if name not in drop]
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        url = httpcore.URL(scheme=b"http", host=record.id.encode(), port=target.port,
                           target=path + (b"?" + query if query else b""))
        # A body only where the request framed one: httpcore would frame any iterator as
        # chunked, which a server that reads no body on GET takes for the next request.
        framed = any(name in (b"content-length", b"transfer-encoding") for name, _ in headers)
        token = _target.set(record)
        try:
            async with self._pool(record.org_id).stream(
                    scope["method"].encode(), url, headers=headers,
                    content=_body(receive) if framed else None,
                    extensions={"timeout": _TIMEOUTS}) as answer:
                await send({"type": "http.response.start", "status": answer.status,
                            "headers": _answer_headers(answer.headers)})
                async for chunk in answer.aiter_stream():
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except (httpcore.ConnectTimeout, httpcore.ReadTimeout, httpcore.WriteTimeout):
            raise ApiError(504, "the sandbox's port did not answer in time") from None
        except httpcore.PoolTimeout:
            raise ApiError(429, f"too many preview connections: this organization already "
                                f"holds {CONNECTIONS_PER_ORG}") from None
        except (httpcore.RemoteProtocolError, httpcore.ReadError, httpcore.WriteError):
            raise ApiError(502, "the server in the sandbox closed the connection or did "
                                "not answer HTTP/1.1") from None
        finally:
            _target.reset(token)

    async def close(self) -> None:
        for pool in self._pools.values():
            with contextlib.suppress(Exception):
                await pool.aclose()
        self._pools.clear()


def _answer_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(name.lower(), value) for name, value in headers
            if name.lower() not in HOP_BY_HOP and name.lower() != b"transfer-encoding"]


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body"):
            return


async def reply(send: Send, status: int, message: str) -> None:
    body = json.dumps({"message": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _SandboxNetwork(httpcore.AsyncNetworkBackend):
    """httpcore's connections, made in the current request's sandbox (``runtime.connect_port``),
    for that sandbox only: the pool's "host" is its id."""

    def __init__(self, lifecycle: Lifecycle) -> None:
        self.lifecycle = lifecycle

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[object] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        record = _target.get()
        if record is None or record.id != host:
            raise httpcore.ConnectError("a connection for another sandbox")
        sock = await self.lifecycle.call_within(
            spec.PREVIEW_CONNECT_TIMEOUT_S + 1.0, record, runtime.connect_port, port)
        sock.setblocking(False)
        return _SocketStream(sock)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[object] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("no unix sockets")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _SocketStream(httpcore.AsyncNetworkStream):
    """A non-blocking socket read and written by the event loop itself (no stream buffers
    on the way: the proxy's whole cost per request is parsing and these calls)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._loop.sock_recv(self._sock, max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout("read timed out") from None
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # A request usually fits the socket's buffer: sent at once, without the loop's
        # writer machinery (which costs more than the send itself).
        if not buffer:
            return  # h11's end of a body without one: no system call for nothing
        try:
            sent = self._sock.send(buffer)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from None
        if sent == len(buffer):
            return
        try:
            async with asyncio.timeout(timeout):
                await self._loop.sock_sendall(self._sock, buffer[sent:])
        except TimeoutError:
            raise httpcore.WriteTimeout("write timed out") from None
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from None

    async def aclose(self) -> None:
        self._sock.close()

    def get_extra_info(self, info: str) -> object:
        if info == "is_readable":  # an idle keep-alive connection that is readable has ended
            if self._sock.fileno() < 0:
                return True
            readable, _, _ = select.select([self._sock], [], [], 0)
            return bool(readable)
        return None
