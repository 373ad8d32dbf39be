"""``/healthz``: 503 until startup recovery is done, then ok, the capability report and the
memory this server gives sandboxes.

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
    # The capacity, not how much of it is used: that would tell every tenant about the others.
    capacity = {"memory_mib": backend.lifecycle.memory_capacity_mib}
    return JSONResponse(
        {"status": "ok", "capabilities": backend.capabilities, "capacity": capacity}
    )
