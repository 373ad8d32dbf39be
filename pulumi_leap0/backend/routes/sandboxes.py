"""Sandboxes (the document's ``Sandbox`` tag, less mounts): create, status, delete, list,
pause, stop, start."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from pulumi_leap0 import spec
from pulumi_leap0.backend import models
from pulumi_leap0.backend.dependencies import Caller, Changing, Creating, Reading
from pulumi_leap0.backend.routing import (
    Router,
    body_schema,
    json_response,
    no_content,
    parse_query,
    public_answer,
    query_parameters,
)

router = Router(tags=["Sandbox"])


@router.post("/v1/sandbox/", status_code=201, response_model=spec.Sandbox,
             openapi_extra=body_schema(spec.SandboxCreateRequest))
async def create_sandbox(request: Request, caller: Creating) -> Response:
    return await public_answer(request, spec.SandboxCreateRequest,
                               lambda body: caller.lifecycle.create(caller.org, body), 201)


@router.get("/v1/sandbox/{sandbox_id}/", response_model=spec.Sandbox)
async def get_sandbox(scope: Reading) -> Response:
    return json_response(scope.sandbox.public())


@router.delete("/v1/sandbox/{sandbox_id}/", status_code=204)
async def delete_sandbox(scope: Changing) -> Response:
    await scope.lifecycle.delete(scope.sandbox)
    return no_content()


@router.get("/v1/sandboxes", response_model=spec.SandboxList,
            openapi_extra=query_parameters(models.ListQuery))
async def list_sandboxes(request: Request, caller: Caller) -> Response:
    query = parse_query(request, models.ListQuery)
    records, total = caller.lifecycle.store.list_sandboxes(
        caller.org,
        state=query.state,
        sort=query.sort,
        descending=query.order_by == "desc",
        page=query.page,
        page_size=query.page_size,
    )
    listing = spec.SandboxList(items=[r.list_item() for r in records], total_items=total)
    return json_response(listing)


@router.post("/v1/sandbox/{sandbox_id}/pause", status_code=201, response_model=spec.Sandbox)
async def pause_sandbox(scope: Changing) -> Response:
    return json_response((await scope.lifecycle.pause(scope.sandbox)).public(), 201)


@router.post("/v1/sandbox/{sandbox_id}/stop", response_model=spec.Sandbox)
async def stop_sandbox(scope: Changing) -> Response:
    return json_response((await scope.lifecycle.stop(scope.sandbox)).public())


@router.post("/v1/sandbox/{sandbox_id}/start", response_model=spec.Sandbox)
async def start_sandbox(scope: Changing) -> Response:
    return json_response((await scope.lifecycle.start(scope.sandbox)).public())
