"""``/healthz``: 503 until startup recovery is done, then ok and the capability report.

Not an operation of the Leap0 API, so a plain ``APIRouter``: one path, as it always was.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pulumi_leap0.backend.dependencies import backend_of

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    backend = backend_of(request)
    if not backend.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    return JSONResponse({"status": "ok", "capabilities": backend.capabilities})
