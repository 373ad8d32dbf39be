"""Who is calling, and which of their sandboxes a route is about: the routes' parameters.

A route states what it needs in its signature and FastAPI resolves it before the route
runs, so no route repeats the preamble:

* ``Caller``: the request's API key, resolved to its organization (401 without a valid
  key). The list takes it.
* ``Reading``: the same, and then ``{sandbox_id}`` resolved among that organization's
  sandboxes (404 for an unknown id and for another organization's sandbox alike). The
  status read takes it.
* ``Creating``, ``Changing``, ``InSandbox``: the same, and one unit of the organization's
  share of workers (``backend.shares``), held until the request is answered: for create;
  for pause, stop, start, delete and mounts; for execute and the file calls. Every route
  that may hold a worker thread takes one of them: a new route under
  ``/v1/sandbox/{sandbox_id}`` that calls the runner takes ``InSandbox`` or ``Changing``.

All answer before the route reads its body, so a stranger learns nothing from a body's
validation errors, and a body is never read for a request that is refused. Each is
``async def``: FastAPI runs a plain ``def`` dependency in a worker thread, which on the GET
hot path costs more than the lookup itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from pulumi_leap0.backend.auth import Authenticator
from pulumi_leap0.backend.lifecycle import Lifecycle
from pulumi_leap0.backend.shares import Lane
from pulumi_leap0.backend.store import SandboxRecord


@dataclass
class Backend:
    """What the routes work with; one per application, in ``app.state.backend``."""

    lifecycle: Lifecycle
    auth: Authenticator
    capabilities: dict[str, object]
    ready: bool = False


def backend_of(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


@dataclass(frozen=True, slots=True)
class OrgScope:
    org: str
    lifecycle: Lifecycle


@dataclass(frozen=True, slots=True)
class SandboxScope:
    #: As read when the request arrived; the lifecycle reads it again where it matters.
    sandbox: SandboxRecord
    lifecycle: Lifecycle


async def org_scope(request: Request) -> OrgScope:
    backend = backend_of(request)
    return OrgScope(backend.auth.org_of(request), backend.lifecycle)


async def sandbox_scope(request: Request, sandbox_id: str) -> SandboxScope:
    backend = backend_of(request)
    org = backend.auth.org_of(request)
    return SandboxScope(backend.lifecycle.get(org, sandbox_id), backend.lifecycle)


async def creating_scope(request: Request) -> AsyncIterator[OrgScope]:
    scope = await org_scope(request)
    async with scope.lifecycle.shares.slot(scope.org, Lane.CHANGES):
        yield scope


def _holding(lane: Lane) -> Callable[[Request, str], AsyncIterator[SandboxScope]]:
    async def scope_in_share(request: Request, sandbox_id: str) -> AsyncIterator[SandboxScope]:
        scope = await sandbox_scope(request, sandbox_id)
        async with scope.lifecycle.shares.slot(scope.sandbox.org_id, lane):
            yield scope

    return scope_in_share


Caller = Annotated[OrgScope, Depends(org_scope)]
Reading = Annotated[SandboxScope, Depends(sandbox_scope)]
Creating = Annotated[OrgScope, Depends(creating_scope)]
Changing = Annotated[SandboxScope, Depends(_holding(Lane.CHANGES))]
InSandbox = Annotated[SandboxScope, Depends(_holding(Lane.CALLS))]
