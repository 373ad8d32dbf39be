"""The application: the API's routers over the store, the lifecycle and the runner.

A request meets ``MIDDLEWARE`` in list order, then the exception handlers
(``errors.HANDLERS``), then the first route of ``ROUTERS`` that matches it. The routes, one
module per tag of the OpenAPI document, live in ``backend/routes/``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from anyio import to_thread
from fastapi import APIRouter, FastAPI
from fastapi.telemetry import TelemetryConfig
from starlette.middleware import Middleware

from pulumi_leap0.backend import capacity, errors, runtime, shares
from pulumi_leap0.backend.auth import Authenticator
from pulumi_leap0.backend.dependencies import Backend
from pulumi_leap0.backend.lifecycle import CALL_TIMEOUT_S, Lifecycle
from pulumi_leap0.backend.middleware import BodyLimit, InternalErrors, SandboxHost
from pulumi_leap0.backend.preview import Preview
from pulumi_leap0.backend.routes import (
    filesystem,
    git,
    health,
    mounts,
    presigned,
    process,
    pty,
    sandboxes,
    snapshots,
    system,
    templates,
)
from pulumi_leap0.backend.store import DB_FILE_NAME, Store

#: In the order requests meet them; InternalErrors last, just outside the exception handlers.
MIDDLEWARE = [
    Middleware(SandboxHost),
    Middleware(BodyLimit),
    Middleware(InternalErrors),
]
NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False,
                                 "operation_spans": False}
#: In the order routes are matched (one module per tag of the OpenAPI document).
ROUTERS: list[APIRouter] = [
    health.router,
    sandboxes.router,
    mounts.router,
    process.router,
    filesystem.router,
    templates.router,
    snapshots.router,
    git.router,
    system.router,
    pty.router,
    presigned.router,
]


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    backend: Backend = app.state.backend
    # Every runner call takes a worker thread: the pool holds many organizations' full
    # shares, so one at its share never makes another wait (backend/shares.py).
    to_thread.current_default_thread_limiter().total_tokens = shares.WORKER_THREADS
    await backend.lifecycle.recover()
    backend.lifecycle.start_reaper()
    backend.ready = True
    try:
        yield
    finally:
        backend.ready = False
        await app.state.preview.close()
        await backend.lifecycle.close()
        backend.lifecycle.store.close()


def create_app(data_dir: Path, runner: runtime.Runner | None = None, *,
               call_timeout_s: float = CALL_TIMEOUT_S,
               memory_capacity_mib: int | None = None,
               sandbox_domain: str = "localhost", url_scheme: str = "http") -> FastAPI:
    """The application over ``data_dir`` (the sqlite store and the runner's files).
    ``call_timeout_s``: how long a file call may take before it is answered 504;
    ``memory_capacity_mib``: the memory all sandboxes may hold at once (default: the
    host's, less a reserve, ``backend/capacity.py``); ``sandbox_domain``: the domain
    whose names reach sandboxes (``backend/middleware.SandboxHost``), ``url_scheme`` the
    scheme its URLs are given with."""
    if memory_capacity_mib is None:
        memory_capacity_mib = capacity.default_memory_mib()
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(data_dir / DB_FILE_NAME)
    if runner is None:
        runner = runtime.make_runner(data_dir / "sandboxes")
    app = FastAPI(
        title="Leap0 API (reference backend)",
        version="1.0.0",
        lifespan=lifespan,
        middleware=MIDDLEWARE,
        exception_handlers=errors.HANDLERS,
        redirect_slashes=False,  # routing.Router serves both forms itself
        # FastAPI's native OpenTelemetry: nothing here configures a provider, and its check
        # for one runs on every request; its logs would carry exception messages.
        telemetry=NO_TELEMETRY,
        # Flat, not ``include_router``: FastAPI 0.165 nests an included router and matches a
        # request twice through it (680 Python calls per GET instead of 457). Each route
        # already carries its router's tags and prefix.
        routes=[route for router in ROUTERS for route in router.routes],
    )
    app.state.backend = Backend(
        lifecycle=Lifecycle(store, runner, snapshot_dir=data_dir / "snapshots",
                            call_timeout_s=call_timeout_s,
                            memory_capacity_mib=memory_capacity_mib),
        auth=Authenticator(store),
        capabilities=runtime.capability_report(runner),
    )
    app.state.preview = Preview(sandbox_domain, app.state.backend.lifecycle,
                                app.state.backend.auth, scheme=url_scheme)
    return app
