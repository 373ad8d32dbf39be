"""Every error leaves the server as JSON in the API's shape, never as an HTML page or a 500.

* 400 ``{"message", "errors": [{"field", "error"}]}`` for a request that breaks a rule, with
  ``spec.py``'s field paths, whether spec.py or FastAPI's own parsing found the problem.
* ``{"message"}`` for everything else (401, 404, 405, 409, 413, ...).

Messages never echo request values: some fields hold credentials.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import pydantic_core
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from pulumi_leap0 import spec


class ApiError(Exception):
    """An answer other than success, raised anywhere below a route."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def not_found(what: str = "sandbox") -> ApiError:
    return ApiError(404, f"{what} not found")


def conflict(message: str) -> ApiError:
    return ApiError(409, message)


def invalid(field: str, error: str) -> spec.SpecError:
    return spec.SpecError([spec.FieldError(field=field, error=error)])


class Failed(spec.SpecError):
    """A 400 whose summary is the sentence itself, not "Invalid request": clients that show
    only ``message`` (the SDK does) show why, e.g. the words of a git command that failed."""

    def body(self) -> spec.ValidationErrorBody:
        return spec.ValidationErrorBody(message=self.errors[0].error, errors=self.errors)


def failed(field: str, error: str) -> Failed:
    return Failed([spec.FieldError(field=field, error=error)])


def message_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"message": message}, status_code=status, headers=headers)


def validation_response(exc: spec.SpecError) -> Response:
    return JSONResponse(exc.body().model_dump(mode="json"), status_code=400)


def _request_validation_errors(exc: RequestValidationError) -> spec.SpecError:
    """FastAPI's errors in the API's words and paths (``body``/``query`` prefixes dropped)."""
    errors: list[spec.FieldError] = []
    for error in exc.errors():
        loc = list(error.get("loc", ()))
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        kind = str(error.get("type", ""))
        if kind == "json_invalid":
            errors.append(spec.FieldError(field="body", error="must be valid JSON"))
            continue
        if kind == "model_attributes_type" or (kind == "dict_type" and not loc):
            errors.append(spec.FieldError(field="body", error="must be a JSON object"))
            continue
        if kind == "missing" and not loc:
            errors.append(spec.FieldError(field="body", error="is required"))
            continue
        field = spec.field_path([p for p in loc if isinstance(p, (int, str))]) or "body"
        errors.append(spec.FieldError(field=field, error=_sentence(kind, error)))
    return spec.SpecError(errors or [spec.FieldError(field="body", error="is invalid")])


def _sentence(kind: str, error: Any) -> str:
    sentences = {
        "missing": "is required",
        "int_parsing": "must be an integer",
        "int_type": "must be an integer",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "greater_than_equal": "must be at least {ge}",
        "less_than_equal": "must be at most {le}",
        "enum": "must be one of {expected}",
        "literal_error": "must be one of {expected}",
    }
    template = sentences.get(kind)
    if template is None:
        return "is invalid"
    try:
        return template.format(**(error.get("ctx") or {}))
    except (KeyError, IndexError):
        return "is invalid"


async def _api_error(_: Request, exc: ApiError) -> Response:
    return message_response(exc.status, exc.message, exc.headers)


async def _spec_error(_: Request, exc: spec.SpecError) -> Response:
    return validation_response(exc)


async def _request_validation(_: Request, exc: RequestValidationError) -> Response:
    return validation_response(_request_validation_errors(exc))


async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
    message = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    return message_response(exc.status_code, message, dict(exc.headers or {}))


#: The application's exception handlers (they replace FastAPI's own for the last two).
HANDLERS: dict[int | type[Exception], Callable[[Request, Any], Coroutine[Any, Any, Response]]] = {
    ApiError: _api_error,
    spec.SpecError: _spec_error,
    RequestValidationError: _request_validation,
    StarletteHTTPException: _http_error,
}


def parse_json(raw: bytes) -> Any:
    """The request body as JSON, or a 400 in the API's shape.

    pydantic-core's parser, not ``json``: ``json.loads`` recurses until a RecursionError
    (a 500) on input nested 100,000 deep, and accepts lone surrogates (``"\\ud800"``, which
    no path, argument or environment can carry) and ``NaN``, none of which is JSON.
    pydantic-core stops at its recursion limit (200 levels) and refuses the others.
    """
    if not raw.strip():
        raise invalid("body", "is required")
    try:
        return pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        if "recursion limit" in str(exc):
            raise invalid("body", "is nested too deeply") from None
        raise invalid("body", "must be valid JSON") from None
