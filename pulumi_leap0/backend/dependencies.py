"""Who is calling, and which of their sandboxes a route is about: the routes' parameters.

A route states what it needs in its signature and FastAPI resolves it before the route
runs, so no route repeats the preamble:

* ``Caller``: the request's API key, resolved to its organization (401 without a valid
  key). Organization-scoped routes take it: create, list.
* ``InSandbox``: the same, and then ``{sandbox_id}`` resolved among that organization's
  sandboxes (404 for an unknown id and for another organization's sandbox alike).
  Every route under ``/v1/sandbox/{sandbox_id}`` takes it.

Both answer before the route reads its body, so a stranger learns nothing from a body's
validation errors. Both are ``async def``: FastAPI runs a plain ``def`` dependency in a
worker thread, which on the GET hot path costs more than the lookup itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from pulumi_leap0.backend.auth import Authenticator
from pulumi_leap0.backend.lifecycle import Lifecycle
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


Caller = Annotated[OrgScope, Depends(org_scope)]
InSandbox = Annotated[SandboxScope, Depends(sandbox_scope)]
