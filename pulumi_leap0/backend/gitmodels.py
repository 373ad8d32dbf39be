"""Request and response bodies of the git calls (the document's ``Git`` tag).

Everything a body holds goes into one git argv (``backend/gitcalls.py``), so the rules here
are what keeps a value from meaning something else there: a ref, remote or revision never
starts with ``-`` (it would be an option), nothing holds a NUL or a line break, and a URL
carries no credentials (``username`` and ``password`` do, for that call only). Limits are
``spec.py``'s.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from pulumi_leap0 import spec
from pulumi_leap0.backend.models import SandboxPath

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NUL = re.compile("\x00")
#: What a URL may start with: a scheme git speaks (``ALLOWED_PROTOCOLS`` of the runner), an
#: scp-like ``host:path``, or a path in the sandbox.
_SCHEMES = ("http", "https", "git", "ssh", "file")


def _size(value: str) -> int:
    return len(value.encode("utf-8", errors="surrogatepass"))


def _within(kind: str, value: str, forbidden: re.Pattern[str], what: str, limit: int,
            bound: str = "") -> str:
    """``value`` if it holds nothing ``forbidden`` (``what`` names it) and at most ``limit``
    bytes (``bound``: that limit in the sentence's words, if not in bytes)."""
    if forbidden.search(value):
        raise PydanticCustomError(kind, f"must not contain {what}")
    if _size(value) > limit:
        raise PydanticCustomError(kind, f"must be at most {bound or f'{limit} bytes'}")
    return value


def _plain(kind: str, value: str, limit: int) -> str:
    if not value:
        raise PydanticCustomError(kind, "must not be empty")
    return _within(kind, value, _CONTROL, "control characters (NUL, line breaks)", limit)


def _ref(value: str) -> str:
    _plain("git_ref", value, spec.MAX_GIT_REF_BYTES)
    if value.startswith("-"):
        raise PydanticCustomError("git_ref", "must not start with '-'")
    return value


def _url(value: str) -> str:
    _plain("git_url", value, spec.MAX_GIT_URL_BYTES)
    if value.startswith("-"):
        raise PydanticCustomError("git_url", "must not start with '-'")
    scheme, sep, _ = value.partition("://")
    if sep:
        if scheme.lower() not in _SCHEMES:
            raise PydanticCustomError(
                "git_url", f"must be a {', '.join(_SCHEMES)} URL, host:path or a path")
        try:
            user_info = urlsplit(value).username is not None
        except ValueError:
            raise PydanticCustomError("git_url", "must be a valid URL") from None
        if user_info and scheme.lower() in ("http", "https"):
            # It would be stored in the clone's .git/config and shown in git's messages.
            raise PydanticCustomError(
                "git_url", "must not contain user-info: give username and password instead")
    elif "::" in value.split("/", 1)[0]:
        raise PydanticCustomError("git_url", "must not name a remote helper (<transport>::)")
    return value


def _credential(value: str) -> str:
    # Never echoed: the rule's words only.
    return _within("git_credential", value, _CONTROL, "control characters",
                   spec.MAX_GIT_CREDENTIAL_BYTES)


def _message(value: str) -> str:
    return _within("git_message", value, _NUL, "NUL characters", spec.MAX_GIT_MESSAGE_BYTES,
                   f"{spec.MAX_GIT_MESSAGE_BYTES // 1024} KiB")


def _text(value: str) -> str:
    return _plain("git_text", value, spec.MAX_GIT_REF_BYTES)


def _files(value: list[str]) -> list[str]:
    if sum(_size(name) + 1 for name in value) > spec.MAX_COMMAND_BYTES:
        raise PydanticCustomError(
            "git_files", f"must hold at most {spec.MAX_COMMAND_BYTES // 1024} KiB of paths")
    return value


Ref = Annotated[str, AfterValidator(_ref)]
Url = Annotated[str, AfterValidator(_url)]
Credential = Annotated[str, AfterValidator(_credential)]
Message = Annotated[str, Field(min_length=1), AfterValidator(_message)]
Text = Annotated[str, AfterValidator(_text)]
ContextLines = Annotated[int, Field(ge=0, le=spec.MAX_GIT_CONTEXT_LINES)]
_MAX_DEPTH = 2**31 - 1


class _Body(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class _WithCredentials(_Body):
    # Both or neither: gitcalls.credentials says which one is missing.
    username: Credential | None = None
    password: Credential | None = None


class GitPathRequest(_Body):
    path: SandboxPath


class GitCloneRequest(_WithCredentials):
    url: Url
    path: SandboxPath
    branch: Ref | None = None
    commit_id: Ref | None = None
    depth: int | None = Field(default=None, ge=0, le=_MAX_DEPTH)


class GitContextRequest(_Body):
    path: SandboxPath
    context_lines: ContextLines = 3


class GitDiffRequest(GitContextRequest):
    target: Ref


class GitLogRequest(_Body):
    path: SandboxPath
    max_count: int = Field(default=10, ge=0, le=spec.MAX_GIT_LOG_COUNT)
    start_timestamp: Text | None = None
    end_timestamp: Text | None = None


class GitShowRequest(_Body):
    path: SandboxPath
    revision: Ref


class GitBranchesRequest(_Body):
    path: SandboxPath
    branch_type: Literal["local", "remote", "all"] | None = None
    contains: Ref | None = None
    not_contains: Ref | None = None


class GitCreateBranchRequest(_Body):
    path: SandboxPath
    name: Ref
    checkout: bool = False
    base_branch: Ref | None = None


class GitCheckoutBranchRequest(_Body):
    path: SandboxPath
    branch: Ref
    create: bool = False


class GitDeleteBranchRequest(_Body):
    path: SandboxPath
    name: Ref
    force: bool = False


class GitAddRequest(_Body):
    path: SandboxPath
    files: Annotated[list[SandboxPath], Field(min_length=1, max_length=spec.MAX_GIT_ADD_FILES),
                     AfterValidator(_files)]


class GitCommitRequest(_Body):
    path: SandboxPath
    message: Message
    author: Text | None = None
    email: Text | None = None
    allow_empty: bool = False


class GitPushPullRequest(_WithCredentials):
    path: SandboxPath
    remote: Ref | None = None
    branch: Ref | None = None
    set_upstream: bool = False
    rebase: bool = False


class GitResult(_Body):
    output: str
    exit_code: int


class GitCommitResponse(_Body):
    sha: str
    result: GitResult
