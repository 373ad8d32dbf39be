"""Presigned preview URLs (the document's ``Presigned URL`` tag): create and revoke.

A URL opens one port of one sandbox to whoever holds it, until it expires
(``spec.PRESIGNED_URL_TTL_DEFAULT_S``, at most ``spec.MAX_PRESIGNED_URL_TTL_S``) or is
deleted. Its token is in the URL's host name, returned once and kept only as a sha256
hash; requests to it are served by ``backend/preview.py``.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from pulumi_leap0.backend import pty_models
from pulumi_leap0.backend.dependencies import Reading
from pulumi_leap0.backend.errors import conflict, not_found
from pulumi_leap0.backend.preview import Preview
from pulumi_leap0.backend.routing import Router, body_schema, json_response, no_content, parse_body
from pulumi_leap0.backend.store import PresignedLimit, iso

router = Router(tags=["Presigned URL"], prefix="/v1/sandbox/{sandbox_id}/presigned-url")


@router.post("", status_code=201, response_model=pty_models.PresignedURLResponse,
             openapi_extra=body_schema(pty_models.PresignedURLCreateRequest))
async def create_presigned_url(request: Request, scope: Reading) -> Response:
    body = await parse_body(request, pty_models.PresignedURLCreateRequest)
    preview: Preview = request.app.state.preview
    try:
        record, token = scope.lifecycle.store.add_presigned_url(scope.sandbox.id, body.port,
                                                                body.expires_in)
    except PresignedLimit as exc:
        raise conflict(str(exc)) from None
    return json_response(pty_models.PresignedURLResponse(
        id=record.id, token=token, url=preview.presigned_url(token),
        sandbox_id=record.sandbox_id, port=record.port, expires_at=iso(record.expires_ts),
        created_at=iso(record.created_ts)), 201)


@router.delete("/{id}", status_code=204)
async def delete_presigned_url(scope: Reading, id: str) -> Response:
    if not scope.lifecycle.store.delete_presigned_url(scope.sandbox.id, id):
        raise not_found("presigned URL")
    return no_content()
