"""Files in a sandbox (the document's ``Filesystem`` tag), as the sandbox's user sees them.

Contents stream: ``write-file`` hands the request body to the sandbox as it arrives, and
``read-file`` and ``read-files`` answer chunk by chunk, so the backend never holds a whole
file it reads. ``write-files`` is the exception: its multipart body is parsed whole
(Starlette keeps parts over 1 MiB in temporary files), bounded by the write-file limit for
all its parts together, because every file must be known before the sandbox stages any.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
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
from pulumi_leap0.backend.routing import (
    ModelT,
    Router,
    body_schema,
    json_response,
    no_content,
    parse_body,
)

router = Router(tags=["Filesystem"], prefix="/v1/sandbox/{sandbox_id}/filesystem")
OCTETS = "application/octet-stream"
#: How long after the runner's own deadline a write-file's caller is answered regardless.
TRANSFER_GRACE_S = 5.0


def _route(path: str, name: str, model: type[ModelT],
           call: Callable[[runtime.Runner, str, ModelT], BaseModel | None],
           answer: type[BaseModel] | None) -> None:
    """A call that reads its JSON body and answers ``answer`` (or 204, for ``None``): the
    same three steps for most file calls, so one endpoint serves them all."""
    async def endpoint(request: Request, scope: InSandbox) -> Response:
        body = await parse_body(request, model)
        result = await scope.lifecycle.call(scope.sandbox, call, body)
        return no_content() if result is None else json_response(result)

    router.add_api_route(f"/{path}", endpoint, methods=["POST"], name=name,
                         status_code=204 if answer is None else None, response_model=answer,
                         openapi_extra=body_schema(model))


_route("ls", "fs_ls", models.LsRequest, runtime.list_dir, models.LsResponse)
_route("stat", "fs_stat", models.PathRequest, runtime.stat, spec.FileInfo)
_route("mkdir", "fs_mkdir", models.MkdirRequest, runtime.mkdir, None)


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


_route("delete", "fs_delete", models.DeleteRequest, runtime.delete, None)
_route("exists", "fs_exists", models.PathRequest, runtime.exists, models.ExistsResponse)


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


_route("set-permissions", "fs_set_permissions", models.SetPermissionsRequest,
       runtime.set_permissions, None)
_route("glob", "fs_glob", models.GlobRequest, runtime.glob, models.GlobResponse)
_route("grep", "fs_grep", models.GrepRequest, runtime.grep, models.GrepResponse)
_route("edit-file", "fs_edit_file", models.EditFileRequest, runtime.edit_file,
       models.EditFileResponse)
_route("edit-files", "fs_edit_files", models.EditFilesRequest, runtime.edit_files,
       models.EditFilesResponse)
_route("move", "fs_move", models.MoveRequest, runtime.move, None)
_route("copy", "fs_copy", models.CopyRequest, runtime.copy, None)
_route("tree", "fs_tree", models.TreeRequest, runtime.tree, models.TreeResponse)
