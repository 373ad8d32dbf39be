"""Files in a sandbox (the document's ``Filesystem`` tag), as the sandbox's user sees them.

Contents stream: ``write-file`` hands the request body to the sandbox as it arrives, and
``read-file`` and ``read-files`` answer chunk by chunk, so the backend never holds a whole
file it reads. ``write-files`` is the exception: its multipart body is parsed whole
(Starlette keeps parts over 1 MiB in temporary files), bounded by the write-file limit for
all its parts together, because every file must be known before the sandbox stages any.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from anyio import to_thread
from fastapi import Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

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


# --- Many files at once ---------------------------------------------------------------------


class _WriteFilesParts(BaseModel):
    """The part names of a ``write-files`` body (each the path of a file)."""

    files: list[models.SandboxPath] = Field(min_length=1, max_length=spec.MAX_BATCH_FILES)


@router.post("/write-files", status_code=204)
async def fs_write_files(request: Request, scope: InSandbox) -> Response:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise errors.invalid("body", "must be multipart/form-data, one part per file")
    try:
        form = await request.form(max_files=spec.MAX_BATCH_FILES,
                                  max_fields=spec.MAX_BATCH_FILES,
                                  max_part_size=spec.MAX_WRITE_FILE_BYTES)
    except (HTTPException, ValueError, KeyError, AssertionError):
        # Starlette answers a malformed body with a bare 400: this one names the field.
        raise errors.invalid("body", "must be valid multipart/form-data, at most "
                             f"{spec.MAX_BATCH_FILES} parts") from None
    try:
        names = [name for name, _ in form.multi_items()]
        spec.validate(_WriteFilesParts, {"files": names})
        items = []
        for name, value in form.multi_items():
            content = await value.read() if isinstance(value, UploadFile) else value.encode()
            items.append((name, content))
    finally:
        await form.close()
    await scope.lifecycle.call_within(spec.FILE_TRANSFER_TIMEOUT_S + TRANSFER_GRACE_S,
                                      scope.sandbox, runtime.write_files, items)
    return no_content()


@router.post("/read-files", openapi_extra=body_schema(models.ReadFilesRequest))
async def fs_read_files(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.ReadFilesRequest)
    reader = await scope.lifecycle.call(scope.sandbox, runtime.read_files, body)
    boundary = secrets.token_hex(16)

    async def parts() -> AsyncIterator[bytes]:
        try:
            for path in body.paths:
                yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{_quoted(path)}\""
                       "\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
                while chunk := await to_thread.run_sync(runtime.next_chunk, reader):
                    yield chunk
                yield b"\r\n"
            yield f"--{boundary}--\r\n".encode()
        finally:
            reader.close()

    return StreamingResponse(parts(), media_type=f"multipart/form-data; boundary={boundary}")


def _quoted(name: str) -> str:
    """A part name as a quoted string (RFC 2045, which Python's ``email`` reads back); line
    breaks, which no header may hold, percent-encoded as browsers do."""
    return (name.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "%0D")
            .replace("\n", "%0A"))


# --- Metadata, searches, edits, moves -------------------------------------------------------


@router.post("/set-permissions", status_code=204,
             openapi_extra=body_schema(models.SetPermissionsRequest))
async def fs_set_permissions(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.SetPermissionsRequest)
    await scope.lifecycle.call(scope.sandbox, runtime.set_permissions, body)
    return no_content()


@router.post("/glob", response_model=models.GlobResponse,
             openapi_extra=body_schema(models.GlobRequest))
async def fs_glob(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.GlobRequest)
    return json_response(await scope.lifecycle.call(scope.sandbox, runtime.glob, body))


@router.post("/grep", response_model=models.GrepResponse,
             openapi_extra=body_schema(models.GrepRequest))
async def fs_grep(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.GrepRequest)
    return json_response(await scope.lifecycle.call(scope.sandbox, runtime.grep, body))


@router.post("/edit-file", response_model=models.EditFileResponse,
             openapi_extra=body_schema(models.EditFileRequest))
async def fs_edit_file(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.EditFileRequest)
    return json_response(await scope.lifecycle.call(scope.sandbox, runtime.edit_file, body))


@router.post("/edit-files", response_model=models.EditFilesResponse,
             openapi_extra=body_schema(models.EditFilesRequest))
async def fs_edit_files(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.EditFilesRequest)
    return json_response(await scope.lifecycle.call(scope.sandbox, runtime.edit_files, body))


@router.post("/move", status_code=204, openapi_extra=body_schema(models.MoveRequest))
async def fs_move(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.MoveRequest)
    await scope.lifecycle.call(scope.sandbox, runtime.move, body)
    return no_content()


@router.post("/copy", status_code=204, openapi_extra=body_schema(models.CopyRequest))
async def fs_copy(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.CopyRequest)
    await scope.lifecycle.call(scope.sandbox, runtime.copy, body)
    return no_content()


@router.post("/tree", response_model=models.TreeResponse,
             openapi_extra=body_schema(models.TreeRequest))
async def fs_tree(request: Request, scope: InSandbox) -> Response:
    body = await parse_body(request, models.TreeRequest)
    return json_response(await scope.lifecycle.call(scope.sandbox, runtime.tree, body))
