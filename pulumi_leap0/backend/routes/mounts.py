"""Mounts of a sandbox (in the document's ``Sandbox`` tag): add, change, remove in place."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from pulumi_leap0 import spec
from pulumi_leap0.backend.dependencies import Changing
from pulumi_leap0.backend.routing import Router, body_schema, no_content, public_answer

router = Router(tags=["Sandbox"])


@router.post("/v1/sandbox/{sandbox_id}/mounts", status_code=201, response_model=spec.Mount,
             openapi_extra=body_schema(spec.MountRequest))
async def add_mount(request: Request, scope: Changing) -> Response:
    return await public_answer(request, spec.MountRequest,
                               lambda body: scope.lifecycle.add_mount(scope.sandbox, body), 201)


@router.patch("/v1/sandbox/{sandbox_id}/mounts/{mount_id}", response_model=spec.Mount,
              openapi_extra=body_schema(spec.MountUpdateRequest))
async def update_mount(request: Request, scope: Changing, mount_id: str) -> Response:
    return await public_answer(
        request, spec.MountUpdateRequest,
        lambda body: scope.lifecycle.update_mount(scope.sandbox, mount_id, body))


@router.delete("/v1/sandbox/{sandbox_id}/mounts/{mount_id}", status_code=204)
async def delete_mount(scope: Changing, mount_id: str) -> Response:
    await scope.lifecycle.delete_mount(scope.sandbox, mount_id)
    return no_content()
