"""Files in a sandbox (the document's ``Filesystem`` tag), as the sandbox's user sees them.

Contents stream: ``write-file`` hands the request body to the sandbox as it arrives, and
``read-file`` answers a large file chunk by chunk, so the backend never holds a whole file.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import Response, StreamingResponse

from pulumi_leap0 import spec
from pulumi_leap0.backend import errors, models, runtime
from pulumi_leap0.backend.dependencies import InSandbox
from pulumi_leap0.backend.routing import Router, body_schema, json_response, no_content, parse_body

router = Router(tags=["Filesystem"], prefix="/v1/sandbox/{sandbox_id}/filesystem")
OCTETS = "application/octet-stream"
#: How long after the runner's own deadline a write-file's caller is answered regardless.
TRANSFER_GRACE_S = 5.0


@router.post("/ls", response_model=models.LsResponse, openapi_extra=body_schema(models.LsRequest))
async def fs_ls(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.LsRequest)
    return json_response(await scope.lifecycle.call(scope.sandbox, runtime.list_dir, body))


@router.post("/stat", response_model=models.FileInfo,
             openapi_extra=body_schema(models.PathRequest))
async def fs_stat(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.PathRequest)
    return json_response(await scope.lifecycle.call(scope.sandbox, runtime.stat, body))


@router.post("/mkdir", status_code=204, openapi_extra=body_schema(models.MkdirRequest))
async def fs_mkdir(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.MkdirRequest)
    await scope.lifecycle.call(scope.sandbox, runtime.mkdir, body)
    return no_content()


@router.post("/write-file", status_code=204)
async def fs_write_file(
    request: Request,
    scope: InSandbox,
    path: Annotated[str, Query()],
    permissions: Annotated[str | None, Query()] = None,
) -> Response:
    query = spec.validate(models.WriteFileQuery, {"path": path, "permissions": permissions})
    length = request.headers.get("content-length", "")
    small = length.isdigit() and int(length) <= runtime.WHOLE_BODY_BYTES
    body = await request.body() if small else request.stream()
    # A transfer's own bound (the runner stops it there), not the server's call timeout:
    # the client's pace is part of it.
    await scope.lifecycle.call_within(spec.FILE_TRANSFER_TIMEOUT_S + TRANSFER_GRACE_S,
                                      scope.sandbox, runtime.write_file, query, body)
    return no_content()


@router.post("/read-file", openapi_extra=body_schema(models.ReadFileRequest))
async def fs_read_file(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.ReadFileRequest)
    if body.head is not None and body.tail is not None:
        raise errors.invalid("head", "head and tail are mutually exclusive")
    reader = await scope.lifecycle.call(scope.sandbox, runtime.read_file, body)
    if reader.complete:
        return Response(b"".join(reader.buffered), media_type=OCTETS)
    return StreamingResponse(runtime.file_content(reader), media_type=OCTETS)


@router.post("/delete", status_code=204, openapi_extra=body_schema(models.DeleteRequest))
async def fs_delete(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.DeleteRequest)
    await scope.lifecycle.call(scope.sandbox, runtime.delete, body)
    return no_content()


@router.post("/exists", response_model=models.ExistsResponse,
             openapi_extra=body_schema(models.PathRequest))
async def fs_exists(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.PathRequest)
    return json_response(await scope.lifecycle.call(scope.sandbox, runtime.exists, body))
