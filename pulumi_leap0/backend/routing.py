"""What every router module shares: the router class, and the body and response helpers.

Bodies are read and validated with ``spec.py`` (not by FastAPI's body parameters), so a bad
request gets exactly the field paths and sentences the provider's ``check`` gives; the
routes still describe their bodies to ``/openapi.json`` through ``body_schema``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from pulumi_leap0 import spec
from pulumi_leap0.backend import errors

ModelT = TypeVar("ModelT", bound=BaseModel)


class Router(APIRouter):
    """An ``APIRouter`` that serves every path with and without its trailing slash.

    The SDK posts to ``/v1/sandbox`` and reads ``/v1/sandbox/{id}/``, the OpenAPI document
    says ``/v1/sandbox/``: both forms are the same operation, and only the documented one
    appears in ``/openapi.json``. A second route, not a redirect: a redirect costs a round
    trip, and not every client follows one on POST.
    """

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().add_api_route(path, endpoint, **kwargs)
        other = path[:-1] if path.endswith("/") else path + "/"
        super().add_api_route(other, endpoint, **{**kwargs, "include_in_schema": False})


def json_response(model: BaseModel, status: int = 200) -> Response:
    # Serialized by pydantic-core in one step: the GET path is the hot path.
    return Response(
        model.model_dump_json(exclude_none=True),
        status_code=status,
        media_type="application/json",
    )


def no_content() -> Response:
    return Response(status_code=204)


class Public(Protocol):
    """A stored record: ``public`` is what the API shows of it."""

    def public(self) -> BaseModel: ...


async def public_answer(request: Request, model: type[ModelT],
                        act: Callable[[ModelT], Awaitable[Public]], status: int = 200) -> Response:
    """A call that makes or changes a record: the body read with ``model``, ``act`` given it,
    and the record it returns answered as the API shows it."""
    record = await act(await parse_body(request, model))
    return json_response(record.public(), status)


async def parse_body(request: Request, model: type[ModelT]) -> ModelT:
    return spec.validate(model, errors.parse_json(await request.body()))


def parse_query(request: Request, model: type[ModelT]) -> ModelT:
    """A list call's query, validated; a 400 ``{"message"}`` naming the parameter. The
    document allows either error shape for these calls, and a body with ``errors`` also
    matches the plain one, so only ``{"message"}`` satisfies its ``oneOf``."""
    try:
        return spec.validate(model, dict(request.query_params))
    except spec.SpecError as exc:
        raise errors.ApiError(400, f"Invalid query: {exc}") from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """An OpenAPI ``requestBody`` for a body that ``parse_body`` reads."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def query_parameters(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI query ``parameters`` for a query that a route validates itself."""
    properties = model.model_json_schema(by_alias=True)["properties"]
    return {
        "parameters": [
            {"name": name, "in": "query", "required": False, "schema": schema}
            for name, schema in properties.items()
        ]
    }
