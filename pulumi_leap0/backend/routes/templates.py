"""Templates (the document's ``Template`` tag): upload, rename, delete.

The document has no call that reads or lists templates; the upload's answer is the one
place a template's digest and image configuration are shown. Its 400 for these calls is a
``oneOf`` of the validation body and the plain one, and a body with ``errors`` matches both
(the plain one allows more properties), so only ``{"message"}`` conforms: the message
names each field and its rule (``Invalid request: name: must not contain white space``),
as the list's query errors do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fastapi import Request
from fastapi.responses import Response

from pulumi_leap0 import spec
from pulumi_leap0.backend.dependencies import Caller, Creating
from pulumi_leap0.backend.errors import ApiError
from pulumi_leap0.backend.routing import Router, body_schema, json_response, no_content, parse_body

router = Router(tags=["Template"])


@contextlib.contextmanager
def _plain_errors() -> Iterator[None]:
    try:
        yield
    except spec.SpecError as exc:
        raise ApiError(400, f"Invalid request: {exc}") from None


@router.post("/v1/template", status_code=201, response_model=spec.Template,
             openapi_extra=body_schema(spec.TemplateUploadRequest))
async def upload_template(request: Request, caller: Caller) -> Response:
    # ``Caller``, not a unit of the organization's share: an upload is bounded by the
    # uploads' own limits (backend/templates.py), and must not hold a share for minutes.
    with _plain_errors():
        body = await parse_body(request, spec.TemplateUploadRequest)
        record = await caller.lifecycle.templates.upload(caller.org, body)
    return json_response(record.public(), 201)


@router.patch("/v1/template/{template_id}", status_code=204,
              openapi_extra=body_schema(spec.TemplateRenameRequest))
async def rename_template(request: Request, template_id: str, caller: Creating) -> Response:
    templates = caller.lifecycle.templates
    template = templates.get(caller.org, template_id)
    with _plain_errors():
        body = await parse_body(request, spec.TemplateRenameRequest)
    templates.rename(template, body.name)
    return no_content()


@router.delete("/v1/template/{template_id}", status_code=204)
async def delete_template(template_id: str, caller: Creating) -> Response:
    templates = caller.lifecycle.templates
    await templates.delete(templates.get(caller.org, template_id))
    return no_content()
