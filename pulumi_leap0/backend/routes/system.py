"""Who a sandbox's processes are (the document's ``system/`` calls, tag ``Sandbox``): the
template's user's home and the working directory of its commands, as the runner recorded
them when it started the sandbox. A record read: no worker, no share, no resume.
"""

from __future__ import annotations

from fastapi.responses import Response

from pulumi_leap0.backend import models
from pulumi_leap0.backend.dependencies import Reading
from pulumi_leap0.backend.routing import Router, json_response

router = Router(tags=["Sandbox"], prefix="/v1/sandbox/{sandbox_id}/system")


@router.get("/user-home-dir", response_model=models.UserHomeDirResponse)
async def user_home_dir(scope: Reading) -> Response:
    who = scope.lifecycle.identity(scope.sandbox)
    return json_response(models.UserHomeDirResponse(user_home_dir=who.home))


@router.get("/workdir", response_model=models.WorkdirResponse)
async def workdir(scope: Reading) -> Response:
    who = scope.lifecycle.identity(scope.sandbox)
    return json_response(models.WorkdirResponse(workdir=who.workdir))
