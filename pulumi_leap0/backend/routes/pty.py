"""Terminals in a sandbox (the document's ``PTY`` tag): sessions, and their WebSocket.

The shell runs in the sandbox on a pseudo-terminal of its own devpts (``runner/terminals.py``);
``connect`` relays bytes both ways without holding a thread (``backend/pty_relay.py``).
Sessions end with the sandbox (stop, delete) and count against its limits
(``spec.MAX_PTY_SESSIONS``; their processes in its cgroup).
"""

from __future__ import annotations

from fastapi import Request, WebSocket
from fastapi.responses import JSONResponse, Response

from pulumi_leap0 import spec
from pulumi_leap0.backend import pty_models, pty_relay, runtime
from pulumi_leap0.backend.dependencies import Backend, InSandbox, Reading
from pulumi_leap0.backend.errors import ApiError
from pulumi_leap0.backend.routing import Router, body_schema, json_response, no_content, parse_body
from pulumi_leap0.backend.shares import Lane

router = Router(tags=["PTY"], prefix="/v1/sandbox/{sandbox_id}/pty")
#: The WebSocket extension that lets a refused upgrade answer with an HTTP status and body.
DENIAL = "websocket.http.response"


@router.get("", response_model=pty_models.PtyListResponse)
async def list_pty_sessions(scope: Reading) -> Response:
    return json_response(runtime.pty_list(scope.lifecycle.runner, scope.sandbox.id))


@router.post("", status_code=201, response_model=pty_models.PtySessionInfo,
             openapi_extra=body_schema(pty_models.PtyCreateRequest))
async def create_pty_session(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, pty_models.PtyCreateRequest)
    info = await scope.lifecycle.call_within(spec.PTY_START_TIMEOUT_S + 5, scope.sandbox,
                                             runtime.pty_create, body)
    return json_response(info, 201)


@router.get("/{session_id}", response_model=pty_models.PtySessionInfo)
async def get_pty_session(scope: Reading, session_id: str) -> Response:
    return json_response(runtime.pty_get(scope.lifecycle.runner, scope.sandbox.id, session_id))


@router.delete("/{session_id}", status_code=204)
async def delete_pty_session(scope: InSandbox, session_id: str) -> Response:
    await scope.lifecycle.call(scope.sandbox, runtime.pty_delete, session_id)
    return no_content()


@router.post("/{session_id}/resize", response_model=pty_models.PtySessionInfo,
             openapi_extra=body_schema(pty_models.PtyResizeRequest))
async def resize_pty_session(request: Request, scope: InSandbox, session_id: str) -> Response:
    body = await parse_body(request, pty_models.PtyResizeRequest)
    return json_response(
        await scope.lifecycle.call(scope.sandbox, runtime.pty_resize, session_id, body))


@router.websocket("/{session_id}/connect")
async def connect_pty_session(websocket: WebSocket, sandbox_id: str, session_id: str) -> None:
    # A WebSocket route gets no exception handlers: the answers a route's dependencies give
    # (401, 404, 429) are given here, as the upgrade's refusal, before it is accepted.
    backend: Backend = websocket.app.state.backend
    try:
        org = backend.auth.org_of(websocket)
        sandbox = backend.lifecycle.get(org, sandbox_id)
        async with backend.lifecycle.shares.slot(org, Lane.CALLS):
            pipes = await backend.lifecycle.call(sandbox, runtime.pty_attach, session_id)
    except ApiError as exc:
        await _refuse(websocket, exc.status, exc.message, exc.headers)
        return
    except spec.SpecError as exc:
        await _refuse(websocket, 400, str(exc))
        return
    await websocket.accept()
    await pty_relay.relay(websocket, sandbox_id, session_id, pipes)


async def _refuse(websocket: WebSocket, status: int, message: str,
                  headers: dict[str, str] | None = None) -> None:
    if DENIAL in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            JSONResponse({"message": message}, status_code=status, headers=headers))
    else:
        await websocket.close(code=1008, reason=message[:120])
