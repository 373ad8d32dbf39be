"""The HTTP API: routes, in the shapes and status codes of Leap0's OpenAPI document.

Bodies are read and validated here with ``spec.py`` (not by FastAPI's body parameters), so
a bad request gets exactly the field paths and sentences the provider's ``check`` gives.
Every route is served with and without a trailing slash: the SDK posts to ``/v1/sandbox``
and reads ``/v1/sandbox/{id}/``, the OpenAPI document says ``/v1/sandbox/``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.middleware import Middleware

from pulumi_leap0 import spec
from pulumi_leap0.backend import errors, models, runtime
from pulumi_leap0.backend.auth import Authenticator
from pulumi_leap0.backend.lifecycle import Lifecycle
from pulumi_leap0.backend.middleware import BodyLimit, InternalErrors, SandboxHost
from pulumi_leap0.backend.store import DB_FILE_NAME, Store

log = logging.getLogger("leap0.backend")

ModelT = TypeVar("ModelT", bound=BaseModel)


def _json(model: BaseModel, status: int = 200) -> Response:
    # Serialized by pydantic-core in one step: the GET path is the hot path.
    return Response(
        model.model_dump_json(exclude_none=True),
        status_code=status,
        media_type="application/json",
    )


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """An OpenAPI requestBody for /openapi.json (the body itself is parsed by hand)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI query parameters for /openapi.json (the query itself is parsed by hand)."""
    properties = model.model_json_schema(by_alias=True)["properties"]
    return [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in properties.items()
    ]


async def _parse(request: Request, model: type[ModelT]) -> ModelT:
    return spec.validate(model, errors.parse_json(await request.body()))


#: In the order requests meet them; InternalErrors last, just outside the exception handlers.
MIDDLEWARE = [
    Middleware(SandboxHost),
    Middleware(BodyLimit),
    Middleware(InternalErrors),
]


def create_app(data_dir: Path, runner: runtime.Runner | None = None) -> FastAPI:
    """The application over ``data_dir`` (the sqlite store and the runner's files)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(data_dir / DB_FILE_NAME)
    the_runner = runner if runner is not None else runtime.make_runner(data_dir / "sandboxes")
    lifecycle = Lifecycle(store, the_runner)
    auth = Authenticator(store)
    capabilities = runtime.capability_report(the_runner)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await lifecycle.recover()
        lifecycle.start_reaper()
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await lifecycle.close()
            store.close()

    app = FastAPI(
        title="Leap0 API (reference backend)",
        version="1.0.0",
        lifespan=lifespan,
        middleware=MIDDLEWARE,
        exception_handlers=errors.HANDLERS,
        redirect_slashes=False,
    )
    app.state.ready = False
    app.state.lifecycle = lifecycle

    def route(path: str, method: str, status: int = 200, **extra: Any) -> Callable[[Any], Any]:
        """Register a handler at ``path`` and at ``path`` with the other trailing-slash form."""
        other = path[:-1] if path.endswith("/") else path + "/"

        def register(fn: Any) -> Any:
            app.add_api_route(path, fn, methods=[method], status_code=status, **extra)
            app.add_api_route(
                other, fn, methods=[method], status_code=status, include_in_schema=False
            )
            return fn

        return register

    # --- Health -------------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    async def healthz() -> Response:
        if not app.state.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok", "capabilities": capabilities})

    # --- Sandboxes ----------------------------------------------------------------------------

    @route("/v1/sandbox/", "POST", 201, openapi_extra=_body_schema(spec.SandboxCreateRequest),
           response_model=spec.Sandbox)
    async def create_sandbox(request: Request) -> Response:
        org = auth.org_of(request)
        body = await _parse(request, spec.SandboxCreateRequest)
        record = await lifecycle.create(org, body)
        return _json(record.public(), 201)

    @route("/v1/sandbox/{sandbox_id}/", "GET", response_model=spec.Sandbox)
    async def get_sandbox(request: Request, sandbox_id: str) -> Response:
        org = auth.org_of(request)
        return _json(lifecycle.get(org, sandbox_id).public())

    @route("/v1/sandbox/{sandbox_id}/", "DELETE", 204)
    async def delete_sandbox(request: Request, sandbox_id: str) -> Response:
        org = auth.org_of(request)
        await lifecycle.delete(org, sandbox_id)
        return Response(status_code=204)

    @route("/v1/sandboxes", "GET", response_model=spec.SandboxList,
           openapi_extra={"parameters": _query_parameters(models.ListQuery)})
    async def list_sandboxes(request: Request) -> Response:
        org = auth.org_of(request)
        try:
            query = spec.validate(models.ListQuery, dict(request.query_params))
        except spec.SpecError as exc:
            # The document allows either error shape here, and a body with ``errors`` also
            # matches the plain one, so only ``{"message"}`` satisfies its ``oneOf``.
            raise errors.ApiError(400, f"Invalid query: {exc}") from None
        records, total = lifecycle.store.list_sandboxes(
            org,
            state=query.state,
            sort=query.sort,
            descending=query.order_by == "desc",
            page=query.page,
            page_size=query.page_size,
        )
        listing = spec.SandboxList(items=[r.list_item() for r in records], total_items=total)
        return _json(listing)

    @route("/v1/sandbox/{sandbox_id}/pause", "POST", 201, response_model=spec.Sandbox)
    async def pause_sandbox(request: Request, sandbox_id: str) -> Response:
        org = auth.org_of(request)
        return _json((await lifecycle.pause(org, sandbox_id)).public(), 201)

    @route("/v1/sandbox/{sandbox_id}/stop", "POST", response_model=spec.Sandbox)
    async def stop_sandbox(request: Request, sandbox_id: str) -> Response:
        org = auth.org_of(request)
        return _json((await lifecycle.stop(org, sandbox_id)).public())

    @route("/v1/sandbox/{sandbox_id}/start", "POST", response_model=spec.Sandbox)
    async def start_sandbox(request: Request, sandbox_id: str) -> Response:
        org = auth.org_of(request)
        return _json((await lifecycle.start(org, sandbox_id)).public())

    # --- Mounts -------------------------------------------------------------------------------

    @route("/v1/sandbox/{sandbox_id}/mounts", "POST", 201,
           openapi_extra=_body_schema(spec.MountRequest), response_model=spec.Mount)
    async def add_mount(request: Request, sandbox_id: str) -> Response:
        org = auth.org_of(request)
        lifecycle.get(org, sandbox_id)
        body = await _parse(request, spec.MountRequest)
        mount = await lifecycle.add_mount(org, sandbox_id, body)
        return _json(mount.public(), 201)

    @route("/v1/sandbox/{sandbox_id}/mounts/{mount_id}", "PATCH",
           openapi_extra=_body_schema(spec.MountUpdateRequest), response_model=spec.Mount)
    async def update_mount(request: Request, sandbox_id: str, mount_id: str) -> Response:
        org = auth.org_of(request)
        lifecycle.get(org, sandbox_id)
        body = await _parse(request, spec.MountUpdateRequest)
        mount = await lifecycle.update_mount(org, sandbox_id, mount_id, body)
        return _json(mount.public())

    @route("/v1/sandbox/{sandbox_id}/mounts/{mount_id}", "DELETE", 204)
    async def delete_mount(request: Request, sandbox_id: str, mount_id: str) -> Response:
        org = auth.org_of(request)
        await lifecycle.delete_mount(org, sandbox_id, mount_id)
        return Response(status_code=204)

    # --- Process ------------------------------------------------------------------------------

    @route("/v1/sandbox/{sandbox_id}/process/execute", "POST",
           openapi_extra=_body_schema(spec.ExecuteRequest), response_model=spec.ExecuteResponse)
    async def execute(request: Request, sandbox_id: str) -> Response:
        org = auth.org_of(request)
        lifecycle.get(org, sandbox_id)
        body = await _parse(request, spec.ExecuteRequest)
        result = await lifecycle.call(
            org, sandbox_id, lambda sid: runtime.execute(the_runner, sid, body)
        )
        return _json(result)

    # --- Filesystem ---------------------------------------------------------------------------

    fs = "/v1/sandbox/{sandbox_id}/filesystem"

    @route(f"{fs}/ls", "POST", openapi_extra=_body_schema(models.LsRequest),
           response_model=models.LsResponse)
    async def fs_ls(request: Request, sandbox_id: str) -> Response:
        org = auth.org_of(request)
        lifecycle.get(org, sandbox_id)
        body = await _parse(request, models.LsRequest)
        return _json(await lifecycle.call(
            org, sandbox_id, lambda sid: runtime.list_dir(the_runner, sid, body)
        ))

    @route(f"{fs}/stat", "POST", openapi_extra=_body_schema(models.PathRequest),
           response_model=models.FileInfo)
    async def fs_stat(request: Request, sandbox_id: str) -> Response:
        org = auth.org_of(request)
        lifecycle.get(org, sandbox_id)
        body = await _parse(request, models.PathRequest)
        return _json(await lifecycle.call(
            org, sandbox_id, lambda sid: runtime.stat(the_runner, sid, body)
        ))

    @route(f"{fs}/mkdir", "POST", 204, openapi_extra=_body_schema(models.MkdirRequest))
    async def fs_mkdir(request: Request, sandbox_id: str) -> Response:
        org = auth.org_of(request)
        lifecycle.get(org, sandbox_id)
        body = await _parse(request, models.MkdirRequest)
        await lifecycle.call(
            org, sandbox_id, lambda sid: runtime.mkdir(the_runner, sid, body)
        )
        return Response(status_code=204)

    @route(f"{fs}/write-file", "POST", 204)
    async def fs_write_file(
        request: Request,
        sandbox_id: str,
        path: Annotated[str, Query()],
        permissions: Annotated[str | None, Query()] = None,
    ) -> Response:
        org = auth.org_of(request)
        lifecycle.get(org, sandbox_id)
        query = spec.validate(models.WriteFileQuery, {"path": path, "permissions": permissions})
        content = await request.body()
        await lifecycle.call(
            org, sandbox_id, lambda sid: runtime.write_file(the_runner, sid, query, content)
        )
        return Response(status_code=204)

    @route(f"{fs}/read-file", "POST", openapi_extra=_body_schema(models.ReadFileRequest))
    async def fs_read_file(request: Request, sandbox_id: str) -> Response:
        org = auth.org_of(request)
        lifecycle.get(org, sandbox_id)
        body = await _parse(request, models.ReadFileRequest)
        if body.head is not None and body.tail is not None:
            raise errors.invalid("head", "head and tail are mutually exclusive")
        data = await lifecycle.call(
            org, sandbox_id, lambda sid: runtime.read_file(the_runner, sid, body)
        )
        return Response(data, media_type="application/octet-stream")

    @route(f"{fs}/delete", "POST", 204, openapi_extra=_body_schema(models.DeleteRequest))
    async def fs_delete(request: Request, sandbox_id: str) -> Response:
        org = auth.org_of(request)
        lifecycle.get(org, sandbox_id)
        body = await _parse(request, models.DeleteRequest)
        await lifecycle.call(
            org, sandbox_id, lambda sid: runtime.delete(the_runner, sid, body)
        )
        return Response(status_code=204)

    @route(f"{fs}/exists", "POST", openapi_extra=_body_schema(models.PathRequest),
           response_model=models.ExistsResponse)
    async def fs_exists(request: Request, sandbox_id: str) -> Response:
        org = auth.org_of(request)
        lifecycle.get(org, sandbox_id)
        body = await _parse(request, models.PathRequest)
        return _json(await lifecycle.call(
            org, sandbox_id, lambda sid: runtime.exists(the_runner, sid, body)
        ))

    return app
