"""Bodies of the PTY and presigned-URL calls, as the OpenAPI document gives them.

Limits come from ``spec.py``; these calls are used only by the backend and the SDK, so
their models live with the backend's (``models.py`` has the filesystem's).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from pulumi_leap0 import spec
from pulumi_leap0.backend.models import SandboxPath

Cols = Annotated[int, Field(ge=1, le=spec.MAX_PTY_COLS)]
Rows = Annotated[int, Field(ge=1, le=spec.MAX_PTY_ROWS)]
SessionId = Annotated[str, Field(pattern=spec.PTY_SESSION_ID_PATTERN)]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class PtyCreateRequest(_Body):
    id: SessionId | None = None
    cwd: SandboxPath | None = None
    envs: spec.Environment = Field(default_factory=dict)
    cols: Cols = spec.PTY_COLS_DEFAULT
    rows: Rows = spec.PTY_ROWS_DEFAULT
    lazy_start: bool = False


class PtyResizeRequest(_Body):
    cols: Cols
    rows: Rows


class PtySessionInfo(_Body):
    id: str
    cwd: str
    envs: dict[str, str]
    cols: int
    rows: int
    created_at: str
    active: bool
    lazy_start: bool


class PtyListResponse(_Body):
    items: list[PtySessionInfo]


class PresignedURLCreateRequest(_Body):
    port: int = Field(ge=1, le=65535)
    expires_in: int = Field(default=spec.PRESIGNED_URL_TTL_DEFAULT_S, ge=1,
                            le=spec.MAX_PRESIGNED_URL_TTL_S)


class PresignedURLResponse(_Body):
    id: str
    token: str
    url: str
    sandbox_id: str
    port: int
    expires_at: str
    created_at: str
