"""Processes in a sandbox (the document's ``Process`` tag): run a command, wait for it."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from pulumi_leap0 import spec
from pulumi_leap0.backend import runtime
from pulumi_leap0.backend.dependencies import InSandbox
from pulumi_leap0.backend.lifecycle import EXECUTE_GRACE_S
from pulumi_leap0.backend.routing import Router, body_schema, json_response, parse_body

router = Router(tags=["Process"])


@router.post("/v1/sandbox/{sandbox_id}/process/execute", response_model=spec.ExecuteResponse,
             openapi_extra=body_schema(spec.ExecuteRequest))
async def execute(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, spec.ExecuteRequest)
    answer_within = body.timeout + EXECUTE_GRACE_S
    return json_response(
        await scope.lifecycle.call_within(answer_within, scope.sandbox, runtime.execute, body)
    )
