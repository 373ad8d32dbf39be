"""Two small ASGI middlewares: request size limits, and per-sandbox host names.

They are plain ASGI (not ``BaseHTTPMiddleware``) because they sit in front of every request,
including the GET hot path, and plain ASGI adds next to nothing.
"""

from __future__ import annotations

import json
import logging
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pulumi_leap0 import spec
from pulumi_leap0.backend.models import MAX_FILE_BODY_BYTES, MAX_JSON_BODY_BYTES

log = logging.getLogger("leap0.backend")


async def _reply(send: Send, status: int, message: str) -> None:
    body = json.dumps({"message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """413 for bodies over the limit, before any of it reaches a route.

    A declared ``Content-Length`` over the limit is refused at once; a chunked body is read
    up to the limit and refused as soon as it goes over, so no route ever buffers more.
    File uploads (``write-file``) have a larger limit than JSON bodies.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = MAX_FILE_BODY_BYTES if path.rstrip("/").endswith("/write-file") else (
            MAX_JSON_BODY_BYTES
        )
        too_large = f"request body larger than {limit // (1024 * 1024)} MiB"
        declared = next(
            (value for name, value in scope["headers"] if name == b"content-length"), None
        )
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _reply(send, 400, "invalid Content-Length")
                return
            if size > limit:
                await _reply(send, 413, too_large)
                return
            await self.app(scope, receive, send)
            return
        # No length given: buffer (at most ``limit`` bytes) and replay.
        chunks: list[Message] = []
        total = 0
        while True:
            message = await receive()
            chunks.append(message)
            if message["type"] != "http.request":
                break
            total += len(message.get("body", b""))
            if total > limit:
                await _reply(send, 413, too_large)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            if chunks:
                return chunks.pop(0)
            return await receive()

        await self.app(scope, replay, send)


_SANDBOX_HOST = re.compile(
    rf"^({re.escape(spec.SANDBOX_ID_PREFIX)}[A-Za-z0-9]+)(?:-\d+)?\.", re.ASCII
)


class SandboxHost:
    """Serve ``https://{id}.{LEAP0_SANDBOX_DOMAIN}/...`` as ``/v1/sandbox/{id}/...``.

    The SDK addresses some sandbox-scoped calls at a per-sandbox host name. When such a host
    resolves to this server (for example ``LEAP0_SANDBOX_DOMAIN=localhost:8360`` on a machine
    where ``*.localhost`` resolves locally), the call lands on the ordinary route.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith("/v1/"):
            host = next((v for n, v in scope["headers"] if n == b"host"), b"").decode("latin-1")
            match = _SANDBOX_HOST.match(host)
            if match:
                path = f"/v1/sandbox/{match.group(1)}{scope['path']}"
                scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


class InternalErrors:
    """A 500 in the API's shape for anything unexpected, and the connection kept healthy.

    Starlette's own last-resort handler answers and then re-raises, and uvicorn then drops
    the keep-alive connection under the client. This layer sits just outside the routes'
    exception handlers and ends the story there. The log gets the traceback, never a body.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            if not started:
                await _reply(send, 500, "internal error")
