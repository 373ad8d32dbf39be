"""Git in a sandbox (the document's ``Git`` tag): ``git`` run as the sandbox's user, in the
sandbox, so its network policy applies to clone, push and pull.

Every operation is the same four steps (resolve the sandbox and take a unit of the
organization's share, read the body, build its ``gitcalls.Call``, run it within its bound),
so the routes are made from one table instead of sixteen copies of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from pulumi_leap0.backend import gitcalls, runtime
from pulumi_leap0.backend import gitmodels as m
from pulumi_leap0.backend.dependencies import InSandbox
from pulumi_leap0.backend.routing import Router, body_schema, json_response, parse_body

router = Router(tags=["Git"], prefix="/v1/sandbox/{sandbox_id}/git")
#: How long after a git call's own bound its caller is answered regardless: the runner kills
#: the call at the bound and may take a few seconds to reap it.
GIT_GRACE_S = 15.0

#: (path, the document's operationId, request body, how it runs, response body)
OPERATIONS: list[tuple[str, str, type[BaseModel], Callable[[Any], gitcalls.Call],
                       type[BaseModel]]] = [
    ("clone", "gitClone", m.GitCloneRequest, gitcalls.clone, m.GitResult),
    ("status", "gitStatus", m.GitPathRequest, gitcalls.status, m.GitResult),
    ("branches", "gitBranches", m.GitBranchesRequest, gitcalls.branches, m.GitResult),
    ("diff-unstaged", "gitDiffUnstaged", m.GitContextRequest, gitcalls.diff_unstaged,
     m.GitResult),
    ("diff-staged", "gitDiffStaged", m.GitContextRequest, gitcalls.diff_staged, m.GitResult),
    ("diff", "gitDiff", m.GitDiffRequest, gitcalls.diff, m.GitResult),
    ("reset", "gitReset", m.GitPathRequest, gitcalls.reset, m.GitResult),
    ("log", "gitLog", m.GitLogRequest, gitcalls.log, m.GitResult),
    ("show", "gitShow", m.GitShowRequest, gitcalls.show, m.GitResult),
    ("create-branch", "gitCreateBranch", m.GitCreateBranchRequest, gitcalls.create_branch,
     m.GitResult),
    ("checkout-branch", "gitCheckoutBranch", m.GitCheckoutBranchRequest,
     gitcalls.checkout_branch, m.GitResult),
    ("delete-branch", "gitDeleteBranch", m.GitDeleteBranchRequest, gitcalls.delete_branch,
     m.GitResult),
    ("add", "gitAdd", m.GitAddRequest, gitcalls.add, m.GitResult),
    ("commit", "gitCommit", m.GitCommitRequest, gitcalls.commit, m.GitCommitResponse),
    ("push", "gitPush", m.GitPushPullRequest, gitcalls.push, m.GitResult),
    ("pull", "gitPull", m.GitPushPullRequest, gitcalls.pull, m.GitResult),
]


def _endpoint(model: type[BaseModel], build: Callable[[Any], gitcalls.Call]
              ) -> Callable[[Request, InSandbox], Awaitable[Response]]:
    async def endpoint(request: Request, scope: InSandbox) -> Response:
        call = build(await parse_body(request, model))
        return json_response(await scope.lifecycle.call_within(
            call.timeout_s + GIT_GRACE_S, scope.sandbox, runtime.git, call))

    return endpoint


for _path, _operation_id, _model, _build, _answer in OPERATIONS:
    router.add_api_route(f"/{_path}", _endpoint(_model, _build), methods=["POST"],
                         name=_operation_id, operation_id=_operation_id,
                         response_model=_answer, openapi_extra=body_schema(_model))
