"""Snapshots (the document's ``Snapshot`` tag, and restore, which it files under
``Sandbox``): create from a sandbox, list, delete, restore into a new sandbox.

Every route that makes or removes something takes a unit of the organization's share of
changes (``Changing`` for the sandbox's snapshot, ``Creating`` for restore and delete), so
capturing a large sandbox holds one of the organization's own workers, never another's;
the list is one sqlite read (``Caller``).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from pulumi_leap0 import spec
from pulumi_leap0.backend import models
from pulumi_leap0.backend.dependencies import Caller, Changing, Creating
from pulumi_leap0.backend.routing import (
    Router,
    body_schema,
    json_response,
    no_content,
    parse_query,
    public_answer,
    query_parameters,
)

router = Router(tags=["Snapshot"])


@router.post("/v1/sandbox/{sandbox_id}/snapshot/create", status_code=201,
             response_model=spec.Snapshot, openapi_extra=body_schema(spec.SnapshotCreateRequest))
async def create_snapshot(request: Request, scope: Changing) -> Response:
    return await public_answer(request, spec.SnapshotCreateRequest,
                               lambda body: scope.lifecycle.snapshot(scope.sandbox, body), 201)


@router.get("/v1/snapshots", response_model=spec.SnapshotList,
            openapi_extra=query_parameters(models.SnapshotListQuery))
async def list_snapshots(request: Request, caller: Caller) -> Response:
    query = parse_query(request, models.SnapshotListQuery)
    records, total = caller.lifecycle.store.list_snapshots(
        caller.org, query=query.query, sort=query.sort, descending=query.order_by == "desc",
        page=query.page, page_size=query.page_size)
    return json_response(spec.SnapshotList(items=[r.public() for r in records],
                                           total_items=total))


@router.delete("/v1/snapshot/{snapshot_id}", status_code=204)
async def delete_snapshot(snapshot_id: str, caller: Creating) -> Response:
    await caller.lifecycle.delete_snapshot(caller.org, snapshot_id)
    return no_content()


@router.post("/v1/snapshot/restore", status_code=201, response_model=spec.Sandbox,
             openapi_extra=body_schema(spec.SnapshotRestoreRequest))
async def restore_snapshot(request: Request, caller: Creating) -> Response:
    return await public_answer(request, spec.SnapshotRestoreRequest,
                               lambda body: caller.lifecycle.restore(caller.org, body), 201)
