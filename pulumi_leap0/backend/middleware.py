"""Small ASGI middlewares: request size limits, per-sandbox host names, last-resort 500s.

They are plain ASGI (not ``BaseHTTPMiddleware``) because they sit in front of every request,
including the GET hot path, and plain ASGI adds next to nothing.
"""

from __future__ import annotations

import json
import logging
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pulumi_leap0 import spec
from pulumi_leap0.backend.errors import ApiError
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


#: The routes whose body is file contents (``write-files``: all its parts together).
FILE_BODY_ROUTES = ("/write-file", "/write-files")


class BodyLimit:
    """413 for bodies over the limit, and no byte of a body read before a route asks.

    A declared ``Content-Length`` over the limit is refused at once. Any other body is
    counted while the route reads it, and the read that goes over the limit raises the
    413. Nothing here reads ahead: a route's dependencies (the caller's key, the caller's
    sandbox, the organization's share) answer before its body is read, so a stranger
    streaming a body gets the 401 at once instead of after the server buffered it.
    File uploads (``write-file``, ``write-files``) have a larger limit than JSON bodies.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = MAX_FILE_BODY_BYTES if path.rstrip("/").endswith(FILE_BODY_ROUTES) else (
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
            # The server ends the body at the declared length: nothing to count.
            await self.app(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiError(413, too_large)
            return message

        await self.app(scope, counted, send)


_SANDBOX_HOST = re.compile(rf"^({re.escape(spec.SANDBOX_ID_PREFIX)}[A-Za-z0-9]+)$", re.ASCII)


class SandboxHost:
    """Requests to host names under the sandbox domain (``serve --sandbox-domain``).

    * ``{id}-{port}.<domain>`` and ``{token}.<domain>``: preview URLs, served by that port in
      the sandbox (``backend/preview.py``); never by the API, whatever the path.
    * ``{id}.<domain>/...``: the SDK's per-sandbox calls, served as ``/v1/sandbox/{id}/...``
      (for example ``LEAP0_SANDBOX_DOMAIN=localhost:8360`` where ``*.localhost`` resolves
      locally).
    * any other name under the domain: 404. Other hosts: the API, as they are.

    The Host header decides, never an absolute-form request target; a request with two Host
    headers is refused, so no hop can pick the other one.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        hosts = [v for n, v in scope["headers"] if n == b"host"]
        if len(hosts) > 1:
            await self._refuse(scope, send, 400, "a request has one Host header")
            return
        preview = scope["app"].state.preview
        label = preview.label(hosts[0].decode("latin-1")) if hosts else None
        if label is None:
            await self.app(scope, receive, send)
            return
        if preview.is_preview(label):
            if scope["type"] == "http":
                await preview.serve(label, scope, receive, send)
            else:
                await self._refuse(scope, send, 404, "WebSockets to preview URLs are not served")
            return
        match = _SANDBOX_HOST.match(label)
        if match is None:
            await self._refuse(scope, send, 404, "not found")
            return
        if not scope["path"].startswith("/v1/"):
            path = f"/v1/sandbox/{match.group(1)}{scope['path']}"
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
        if scope["type"] == "http":
            await _reply(send, status, message)
        else:
            await send({"type": "websocket.close", "code": 1008})


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
