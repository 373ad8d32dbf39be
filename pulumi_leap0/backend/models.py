"""Request and response bodies of the filesystem calls, as the OpenAPI document gives them.

The sandbox, mount and process bodies live in ``spec.py`` (the contract the provider shares);
the filesystem calls are used only by the backend and the SDK, so their models live here
(but ``spec.FileInfo``, which the runner's file calls answer too).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

from pulumi_leap0 import spec

#: JSON request bodies larger than this answer 413; file contents have their own limit.
MAX_JSON_BODY_BYTES = 1024 * 1024
MAX_FILE_BODY_BYTES = spec.MAX_WRITE_FILE_BYTES


def _path(value: str) -> str:
    if not value:
        raise PydanticCustomError("path", "must not be empty")
    if "\0" in value:
        raise PydanticCustomError("path", "must not contain NUL characters")
    try:
        encoded = value.encode()
    except UnicodeEncodeError:
        raise PydanticCustomError("path", "must be valid UTF-8") from None
    if len(encoded) > spec.MAX_PATH_BYTES:
        raise PydanticCustomError("path", f"must be at most {spec.MAX_PATH_BYTES} bytes long")
    if any(len(name) > spec.MAX_NAME_BYTES for name in encoded.split(b"/")):
        raise PydanticCustomError(
            "path", f"must not hold a name longer than {spec.MAX_NAME_BYTES} bytes")
    return value


def _mode(value: str | None) -> str | None:
    if value is None:
        return None
    digits = value.strip()
    if not digits or len(digits) > 4 or any(c not in "01234567" for c in digits):
        raise PydanticCustomError("permissions", "must be an octal mode such as 755")
    return digits


SandboxPath = Annotated[str, AfterValidator(_path)]
OctalMode = Annotated[str | None, AfterValidator(_mode)]


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class PathRequest(_Body):
    path: SandboxPath


ExcludePattern = Annotated[str, Field(max_length=spec.MAX_LS_EXCLUDE_CHARS)]


class LsRequest(_Body):
    path: SandboxPath
    recursive: bool = False
    exclude: list[ExcludePattern] = Field(default_factory=list, max_length=spec.MAX_LS_EXCLUDE)


class MkdirRequest(_Body):
    path: SandboxPath
    recursive: bool = False
    permissions: OctalMode = None


#: The document's ``uint64`` offset and ``uint32`` counts; a file offset is a signed 64 bits.
_MAX_OFFSET, _MAX_COUNT = 2**63 - 1, 2**32 - 1


class ReadFileRequest(_Body):
    path: SandboxPath
    offset: int | None = Field(default=None, ge=0, le=_MAX_OFFSET)
    limit: int | None = Field(default=None, ge=0, le=_MAX_COUNT)
    head: int | None = Field(default=None, ge=0, le=_MAX_COUNT)
    tail: int | None = Field(default=None, ge=0, le=_MAX_COUNT)


class DeleteRequest(_Body):
    path: SandboxPath
    recursive: bool = False


class WriteFileQuery(_Body):
    path: SandboxPath
    permissions: OctalMode = None


class LsResponse(_Body):
    items: list[spec.FileInfo]


class ExistsResponse(_Body):
    exists: bool


# --- The calls over many files, searches and edits -----------------------------------------

#: A file name pattern (``include``, a glob ``pattern``), as long as an ``exclude`` pattern.
NamePattern = Annotated[str, Field(max_length=spec.MAX_LS_EXCLUDE_CHARS)]
Excludes = Annotated[list[ExcludePattern], Field(max_length=spec.MAX_LS_EXCLUDE)]
#: What ``edit-file``'s and ``edit-files``' ``find`` and ``replace`` may hold: the JSON body
#: limit bounds them first.
EditText = Annotated[str, Field(max_length=MAX_JSON_BODY_BYTES)]


class ReadFilesRequest(_Body):
    paths: list[SandboxPath] = Field(min_length=1, max_length=spec.MAX_BATCH_FILES)


class SetPermissionsRequest(_Body):
    path: SandboxPath
    mode: OctalMode = None
    owner: Annotated[str | None, Field(min_length=1, max_length=spec.MAX_NAME_BYTES)] = None
    group: Annotated[str | None, Field(min_length=1, max_length=spec.MAX_NAME_BYTES)] = None


class GlobRequest(_Body):
    path: SandboxPath
    pattern: Annotated[str | None, Field(max_length=spec.MAX_PATH_BYTES)] = None
    exclude: Excludes = Field(default_factory=list)


class GlobResponse(_Body):
    items: list[str]


class GrepRequest(_Body):
    path: SandboxPath
    pattern: Annotated[str | None, Field(max_length=spec.MAX_GREP_PATTERN_CHARS)] = None
    include: NamePattern | None = None
    exclude: Excludes = Field(default_factory=list)


class SearchMatch(_Body):
    path: str
    line: int
    content: str


class GrepResponse(_Body):
    items: list[SearchMatch]


class FileEdit(_Body):
    find: Annotated[EditText, Field(min_length=1)]
    replace: EditText | None = None


class EditFileRequest(_Body):
    path: SandboxPath
    edits: list[FileEdit] = Field(min_length=1, max_length=spec.MAX_EDITS)


class EditFileResponse(_Body):
    diff: str
    replacements: int


class EditFilesRequest(_Body):
    files: list[SandboxPath] = Field(min_length=1, max_length=spec.MAX_BATCH_FILES)
    find: Annotated[EditText, Field(min_length=1)]
    replace: EditText | None = None


class EditResult(_Body):
    file: str
    success: bool
    error: str | None = None


class EditFilesResponse(_Body):
    items: list[EditResult]


class MoveRequest(_Body):
    src_path: SandboxPath
    dst_path: SandboxPath
    overwrite: bool = False


class CopyRequest(_Body):
    src_path: SandboxPath
    dst_path: SandboxPath
    recursive: bool = False
    overwrite: bool = False


class TreeRequest(_Body):
    path: SandboxPath
    exclude: Excludes = Field(default_factory=list)
    max_depth: int | None = Field(default=None, ge=0, le=spec.MAX_TREE_DEPTH)


class TreeEntry(_Body):
    name: str
    type: Literal["file", "directory"]
    children: list[TreeEntry] | None = None


class TreeResponse(_Body):
    items: list[TreeEntry]


class UserHomeDirResponse(_Body):
    user_home_dir: str


class WorkdirResponse(_Body):
    workdir: str


#: What a listing can filter by: every state but ``deleted``, which no listing shows (the
#: store forgets a sandbox once it is deleted).
LIST_STATES = tuple(s for s in spec.SandboxState if s is not spec.SandboxState.DELETED)


def _list_state(value: object) -> object:
    if value not in LIST_STATES:
        names = [f"'{s.value}'" for s in LIST_STATES]
        expected = f"{', '.join(names[:-1])} or {names[-1]}"
        raise PydanticCustomError("literal_error", "must be one of {expected}",
                                  {"expected": expected})
    return value


ListState = Annotated[
    spec.SandboxState,
    BeforeValidator(_list_state),
    WithJsonSchema({"type": "string", "enum": [s.value for s in LIST_STATES]}),
]


class _PagedQuery(_Body):
    """What every list call's query has: order and page (field names as the API spells
    them); the unknown parameters a client may send are ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    order_by: Literal["asc", "desc"] = Field(default="desc", alias="order-by")
    page: int = Field(default=1, ge=1)
    page_size: int = Field(
        default=spec.LIST_PAGE_SIZE_DEFAULT,
        ge=1,
        le=spec.LIST_PAGE_SIZE_MAX,
        alias="page-size",
    )


class ListQuery(_PagedQuery):
    """The query of ``GET /v1/sandboxes``."""

    state: ListState | None = None
    sort: Literal["created_at", "state"] = "created_at"


class SnapshotListQuery(_PagedQuery):
    """The query of ``GET /v1/snapshots``: ``query`` matches part of a name, any case."""

    query: str = Field(default="", max_length=spec.MAX_SNAPSHOT_NAME_CHARS)
    sort: Literal["created_at", "template_id"] = "created_at"
