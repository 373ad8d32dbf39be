"""The one narrow seam between the backend and ``pulumi_leap0.runner``.

Everything the backend knows about the runner is here: how a stored sandbox becomes the
runner's ``SandboxConfig``, how a mount becomes its ``MountConfig`` (credentials included:
they go to the runner and nowhere else), how runner results become API bodies, and how
runner errors become API errors. The routes and the lifecycle never touch runner types
except through the names exported here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TypeAlias

from anyio import from_thread, to_thread
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from pulumi_leap0 import spec
from pulumi_leap0.backend import gitcalls, models, pty_models
from pulumi_leap0.backend.errors import ApiError, failed, invalid
from pulumi_leap0.backend.store import MountRecord, SandboxRecord, TemplateRecord, iso
from pulumi_leap0.runner import templates as runner_templates
from pulumi_leap0.runner.core import Runner as LinuxRunner
from pulumi_leap0.runner.errors import (
    FileCallAborted,
    FileCallError,
    FileCallOSError,
    RunnerError,
    SandboxFrozenError,
    SandboxNotFoundError,
    SandboxNotRunningError,
    TerminalConflictError,
    TerminalInputError,
    TerminalNotFoundError,
    TerminalTimeoutError,
)
from pulumi_leap0.runner.filecalls import FileReader, FilesReader
from pulumi_leap0.runner.git import GitCredentials, GitMissing, GitNotStarted
from pulumi_leap0.runner.images import BasicCredentials, Image, ImageStore, PullError
from pulumi_leap0.runner.network import EgressSettings
from pulumi_leap0.runner.snapshots import SeedTooLarge
from pulumi_leap0.runner.terminals import Terminal, input_frames
from pulumi_leap0.runner.types import MountConfig, SandboxConfig, SandboxIdentity

__all__ = [
    "LinuxRunner",
    "Runner",
    "RunnerError",
    "SandboxConfig",
    "SandboxIdentity",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SeedTooLarge",
    "Terminal",
    "input_frames",
    "make_runner",
]


log = logging.getLogger("leap0.backend")

#: The runner the backend drives. The real class, not a Protocol: go-to-definition on
#: ``lifecycle.runner.start`` lands on the code that makes the sandbox, and mypy checks every
#: call against it. The seam stays narrow by rule instead: only this module and
#: ``lifecycle.py`` hold a runner, and only this module imports runner types. Failures are
#: ``RunnerError`` or one of its kinds (``runner/errors.py``), with messages that never carry
#: credentials; ``translate_errors`` and the lifecycle make them answers.
Runner: TypeAlias = LinuxRunner


def make_runner(root_dir: Path, *, egress_resolver: str | None = None,
                egress_ca_file: Path | None = None,
                allow_mount_endpoints: Sequence[str] = (),
                insecure_registries: Sequence[str] = ()) -> LinuxRunner:
    """The Linux runner. ``egress_resolver`` ("ip:port") and ``egress_ca_file`` are how the
    egress filters of custom policies resolve names and verify upstream TLS (defaults: the
    host's resolver and trust store); mounts resolve their endpoints with the same resolver.
    ``allow_mount_endpoints`` are CIDRs mount endpoints may reach although the address
    guard refuses them. Container images of templates live in ``images/`` beside
    ``root_dir``; ``insecure_registries`` (``host:port``) are pulled from without TLS."""
    egress = EgressSettings(resolver=egress_resolver, upstream_ca_file=egress_ca_file,
                            allow_mount_endpoints=tuple(allow_mount_endpoints))
    images = ImageStore(root_dir.parent / "images", insecure_registries)
    return LinuxRunner(root_dir, egress=egress, images=images)


def capability_report(runner: Runner) -> dict[str, object]:
    """The runner's capabilities as JSON-ready values (``/healthz``, ``doctor``)."""
    return dataclasses.asdict(runner.capabilities())


# --- Configs --------------------------------------------------------------------------------


def sandbox_config(record: SandboxRecord, image: Image | None = None, *,
                   seed: Path | None = None) -> SandboxConfig:
    """``image``: the root of the sandbox's user template (``image_of``), None for a
    system template; ``seed``: a snapshot's archive, for a sandbox restored from it."""
    return SandboxConfig(
        id=record.id,
        template=record.template_name,
        image=image,
        vcpu=record.vcpu,
        memory_mib=record.memory,
        env=dict(record.env_vars),
        network_policy=record.network_policy or spec.NetworkPolicy(mode="allow-all"),
        mounts=[mount_config(m) for m in record.mounts],
        disk_mib=record.disk,
        seed=seed,
    )


def mount_config(mount: MountRecord) -> MountConfig:
    c = mount.config
    return MountConfig(
        id=mount.id,
        bucket=c.bucket,
        mount_path=c.mount_path,
        endpoint=c.endpoint,
        prefix=c.prefix,
        read_only=c.read_only,
        access_key_id=c.access_key_id,
        secret_access_key=c.secret_access_key,
    )


# --- Errors ---------------------------------------------------------------------------------

# What the kernel answered the sandbox user, as the API answers it. A file call's errno is
# about the sandbox's files, so every one is the caller's 4xx, never a 500; the sentence
# names the input (``path``) and never repeats its value.
_FILE_ERRNO_ANSWERS: dict[int, tuple[int, str]] = {
    errno.ENOENT: (404, "no such file or directory"),
    errno.EEXIST: (409, "already exists"),
    errno.EACCES: (403, "permission denied"),
    errno.EPERM: (403, "operation not permitted"),
    errno.EBUSY: (409, "is busy: a mount point, or in use"),
    errno.ETXTBSY: (409, "is a program that is running"),
    errno.EAGAIN: (409, "cannot be served now: the sandbox is at its process limit"),
}
_FILE_ERRNO_RULES: dict[int, str] = {
    errno.ENOTDIR: "is not a directory, or goes through something that is not",
    errno.EISDIR: "is a directory",
    errno.EROFS: "is on a read-only file system",
    errno.ENOSPC: "does not fit: the sandbox's disk is full",
    errno.EDQUOT: "does not fit: the sandbox's disk is full",
    errno.ENAMETOOLONG: (f"is too long: a name has at most {spec.MAX_NAME_BYTES} bytes and "
                         f"a path {spec.MAX_PATH_BYTES}"),
    errno.ELOOP: ("goes through a symbolic link that is not followed here: too many in a "
                  "row, the last one of a path being changed, or one like /proc/<pid>/root "
                  "that leaves the sandbox's view"),
    errno.EIO: "could not be read or written (input/output error)",
    errno.ENXIO: "is not a regular file",
    errno.ENODEV: "is not a regular file",
    errno.EFBIG: "is too large",
    errno.EOVERFLOW: "is too large",
    errno.EINVAL: "is not valid for this call",
}


def _file_answer(exc: OSError) -> Exception:
    code = exc.errno or 0
    # The input the kernel's answer is about: ``path``, unless the call named another.
    field = exc.field if isinstance(exc, FileCallOSError) else "path"
    if code == errno.ENOTEMPTY:
        if field == "path":
            return invalid("recursive", "must be true to delete a non-empty directory")
        return ApiError(409, f"{field}: is a directory that is not empty")
    if code in _FILE_ERRNO_ANSWERS:
        status, sentence = _FILE_ERRNO_ANSWERS[code]
        return ApiError(status, f"{field}: {sentence}")
    sentence = _FILE_ERRNO_RULES.get(code) or os.strerror(code).lower()
    return invalid(field, sentence)


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Runner and OS errors as API answers. Messages name the kind, never the values."""
    try:
        yield
    except TerminalNotFoundError:
        raise ApiError(404, "PTY session not found") from None
    except TerminalConflictError as exc:
        raise ApiError(409, str(exc)) from None
    except TerminalInputError as exc:
        raise invalid(exc.field, exc.message) from None
    except TerminalTimeoutError as exc:
        raise ApiError(504, str(exc)) from None
    except (SandboxNotRunningError, SandboxFrozenError, SandboxNotFoundError):
        raise ApiError(409, "the sandbox is not running") from None
    except FileCallError as exc:
        raise invalid(exc.field, exc.message) from None
    except FileCallAborted as exc:
        raise ApiError(409, str(exc)) from None
    except gitcalls.GitFailed as exc:
        raise failed(exc.field, str(exc)) from None
    except GitNotStarted as exc:
        raise ApiError(503, str(exc), headers={"Retry-After": "1"}) from None
    except GitMissing as exc:
        raise ApiError(409, str(exc)) from None
    except OSError as exc:
        raise _file_answer(exc) from None
    except ValueError as exc:
        raise invalid("path", str(exc)) from None


# --- Calls ----------------------------------------------------------------------------------


def execute(runner: Runner, sandbox_id: str, body: spec.ExecuteRequest) -> spec.ExecuteResponse:
    result = runner.exec(
        sandbox_id, body.command, cwd=body.cwd, env=dict(body.envs), timeout=body.timeout
    )
    stderr = result.stderr
    if result.timed_out:
        stderr += f"\ncommand timed out after {body.timeout}s\n"
    return spec.ExecuteResponse(exit_code=result.exit_code, stdout=result.stdout, stderr=stderr)


def list_dir(runner: Runner, sandbox_id: str, body: models.LsRequest) -> models.LsResponse:
    items = runner.files.list_dir(
        sandbox_id, body.path, recursive=body.recursive, exclude=list(body.exclude)
    )
    return models.LsResponse(items=items)


def stat(runner: Runner, sandbox_id: str, body: models.PathRequest) -> spec.FileInfo:
    return runner.files.stat(sandbox_id, body.path)


def mkdir(runner: Runner, sandbox_id: str, body: models.MkdirRequest) -> None:
    runner.files.mkdir(
        sandbox_id, body.path, recursive=body.recursive, mode=int(body.permissions or "755", 8)
    )


#: A write-file body of at most this many bytes is read whole before the call (one round
#: trip to the sandbox instead of two); a larger one streams.
WHOLE_BODY_BYTES = 64 * 1024


def write_file(
    runner: Runner, sandbox_id: str, query: models.WriteFileQuery,
    body: bytes | AsyncIterator[bytes],
) -> None:
    """The request body into the file (run in a worker thread), chunk by chunk as it
    arrives unless it is small: the backend holds one chunk at a time, and the sandbox's
    own helper writes it, so the page cache and tmpfs pages are the sandbox's."""
    mode = int(query.permissions, 8) if query.permissions else None
    content = body if isinstance(body, bytes) else _pulled(body)
    runner.files.write_file(sandbox_id, query.path, content, mode=mode)


#: How much of a streamed body one hop to the event loop collects: hops cost more than
#: copies, and uvicorn hands the body over in pieces of 64 KiB or less.
PULL_BYTES = 1024 * 1024


def _pulled(body: AsyncIterator[bytes]) -> Iterator[bytes]:
    async def next_piece() -> bytes | None:
        parts: list[bytes] = []
        size = 0
        try:
            while size < PULL_BYTES:
                part = await body.__anext__()
                parts.append(part)
                size += len(part)
        except StopAsyncIteration:
            if not parts:
                return None
        except ClientDisconnect:
            raise ApiError(400, "the request body ended early") from None
        return b"".join(parts)

    while (piece := from_thread.run(next_piece)) is not None:
        if piece:
            yield piece


#: What a read-file fetches before it answers: a file this small is answered in one piece.
READ_AHEAD_BYTES = 256 * 1024


def read_file(runner: Runner, sandbox_id: str, body: models.ReadFileRequest) -> FileReader:
    """The file open and read ahead; errors about the file come from here, before the
    answer starts. ``head``, ``tail``, ``offset`` and ``limit`` are applied in the sandbox."""
    reader = runner.files.open_file(sandbox_id, body.path, offset=body.offset or 0,
                                    limit=body.limit, head=body.head, tail=body.tail)
    try:
        reader.prefetch(READ_AHEAD_BYTES)
    except BaseException:
        reader.close()
        raise
    return reader


async def file_content(reader: FileReader) -> AsyncIterator[bytes]:
    """The rest of a read, a chunk at a time, each waited for in a worker thread. An error
    after the answer started (the file shrank, the call ran out of time) ends the stream
    without its last chunk, so the client sees a broken transfer, not a short file."""
    try:
        for chunk in reader.buffered:
            yield chunk
        reader.buffered.clear()
        while chunk := await to_thread.run_sync(reader.read):
            yield chunk
    finally:
        reader.close()


def delete(runner: Runner, sandbox_id: str, body: models.DeleteRequest) -> None:
    runner.files.delete(sandbox_id, body.path, recursive=body.recursive)


def exists(runner: Runner, sandbox_id: str, body: models.PathRequest) -> models.ExistsResponse:
    return models.ExistsResponse(exists=runner.files.exists(sandbox_id, body.path))


# --- Templates ------------------------------------------------------------------------------

#: The writable layer of a sandbox of a user template (a system template says its own).
IMAGE_DISK_MIB = runner_templates.DEFAULT_DISK_MIB

#: Credential types that need a cloud's token exchange, which this backend cannot do.
_UNSERVED_CREDENTIALS = {"aws": "AWS ECR", "gcp": "Google Artifact Registry",
                         "azure": "Azure Container Registry"}


def pull_image(runner: Runner, body: spec.TemplateUploadRequest) -> Image:
    """Pull and unpack the upload's image (minutes, in a worker thread of the uploads'
    own); ``ApiError`` 400 naming the input at fault (``uri``, ``credentials``)."""
    credentials = None
    if body.credentials is not None:
        if body.credentials.type in _UNSERVED_CREDENTIALS:
            raise invalid("credentials.type", f"this backend cannot pull with "
                          f"{body.credentials.type} credentials (they need "
                          f"{_UNSERVED_CREDENTIALS[body.credentials.type]}'s token "
                          "exchange), only with basic ones")
        assert body.credentials.username and body.credentials.password
        credentials = BasicCredentials(body.credentials.username, body.credentials.password)
    try:
        return runner.images.pull(body.uri, spec.image_registry(body.uri),
                                  credentials=credentials,
                                  timeout_s=spec.TEMPLATE_UPLOAD_TIMEOUT_S,
                                  max_mib=spec.MAX_TEMPLATE_IMAGE_MIB)
    except PullError as exc:
        raise invalid(exc.field, exc.message) from None
    except RunnerError as exc:  # our side: the store, the scratch tmpfs
        log.error("an upload failed: %s", exc)
        raise ApiError(503, "the image could not be stored; try again later") from None


def image_config(image: Image) -> spec.ImageConfig:
    return spec.ImageConfig.model_validate(image.config)


def image_of(runner: Runner, template: TemplateRecord) -> Image:
    image = runner.images.get(template.digest) if template.digest else None
    if image is None:
        raise ApiError(409, "the template's image is gone from this backend: upload it again")
    return image


def has_image(runner: Runner, digest: str) -> bool:
    return runner.images.get(digest) is not None


def remove_image(runner: Runner, digest: str) -> None:
    runner.images.remove(digest)


def snapshot(runner: Runner, sandbox_id: str, dest: Path, *, keep_frozen: bool) -> int:
    """The sandbox's files into ``dest``, a private file of the backend's; its size."""
    return runner.snapshots.take(sandbox_id, dest, keep_frozen=keep_frozen)


def git(runner: Runner, sandbox_id: str, call: gitcalls.Call) -> BaseModel:
    """A git operation (``gitcalls.py``): its runs share one deadline, the operation's
    bound (``spec.GIT_*_TIMEOUT_S``); the runner kills every process of a run at it."""
    deadline = time.monotonic() + call.timeout_s
    credentials = GitCredentials(*call.credentials) if call.credentials else None
    late = ApiError(504, f"git {call.name} did not finish within {call.timeout_s} s")

    def run(args: Sequence[str]) -> gitcalls.Outcome:
        left = deadline - time.monotonic()
        if left <= 0:
            raise late
        result = runner.git.run(sandbox_id, args, env=call.env, timeout=left,
                                max_output=spec.MAX_GIT_OUTPUT_BYTES, credentials=credentials)
        if result.timed_out:
            raise late
        note = f"\n[git's output was cut at {spec.MAX_GIT_OUTPUT_BYTES} bytes]\n"
        return gitcalls.Outcome(result.exit_code, result.output + (note if result.cut else ""))

    return call.perform(run)  # a GitFailed becomes a 400 in translate_errors
# --- Calls over many files, searches, edits (run in the sandbox's file helper) --------------


def write_files(runner: Runner, sandbox_id: str, items: Sequence[tuple[str, bytes]]) -> None:
    runner.files.write_files(sandbox_id, items)


def read_files(runner: Runner, sandbox_id: str, body: models.ReadFilesRequest) -> FilesReader:
    """The files open; errors about any of them come from here, before the answer starts."""
    return runner.files.open_files(sandbox_id, body.paths)


def next_chunk(reader: FilesReader) -> bytes:
    """The next chunk of the file being read; ``b""`` at its end (run in a worker thread)."""
    return reader.read()


def set_permissions(runner: Runner, sandbox_id: str, body: models.SetPermissionsRequest) -> None:
    runner.files.set_permissions(sandbox_id, body.path, mode=None if body.mode is None else
                                 int(body.mode, 8), owner=body.owner, group=body.group)


def glob(runner: Runner, sandbox_id: str, body: models.GlobRequest) -> models.GlobResponse:
    return models.GlobResponse(items=runner.files.glob(sandbox_id, body.path, body.pattern,
                                                       list(body.exclude)))


def grep(runner: Runner, sandbox_id: str, body: models.GrepRequest) -> models.GrepResponse:
    if not body.pattern:
        raise invalid("pattern", "must be a non-empty regular expression")
    items = runner.files.grep(sandbox_id, body.path, body.pattern, include=body.include,
                              exclude=list(body.exclude))
    return models.GrepResponse.model_validate({"items": items})


def tree(runner: Runner, sandbox_id: str, body: models.TreeRequest) -> models.TreeResponse:
    depth = spec.MAX_TREE_DEPTH if body.max_depth is None else body.max_depth
    items = runner.files.tree(sandbox_id, body.path, max_depth=depth,
                              exclude=list(body.exclude))
    return models.TreeResponse.model_validate({"items": items})


def edit_file(runner: Runner, sandbox_id: str,
              body: models.EditFileRequest) -> models.EditFileResponse:
    edits = [(e.find, e.replace or "") for e in body.edits]
    return models.EditFileResponse.model_validate(
        runner.files.edit_file(sandbox_id, body.path, edits))


def edit_files(runner: Runner, sandbox_id: str,
               body: models.EditFilesRequest) -> models.EditFilesResponse:
    items = runner.files.edit_files(sandbox_id, body.files, body.find, body.replace or "")
    return models.EditFilesResponse.model_validate({"items": items})


def move(runner: Runner, sandbox_id: str, body: models.MoveRequest) -> None:
    runner.files.move(sandbox_id, body.src_path, body.dst_path, overwrite=body.overwrite)


def copy(runner: Runner, sandbox_id: str, body: models.CopyRequest) -> None:
    runner.files.copy(sandbox_id, body.src_path, body.dst_path, recursive=body.recursive,
                      overwrite=body.overwrite)


# --- System ---------------------------------------------------------------------------------


def identity(runner: Runner, sandbox_id: str) -> SandboxIdentity:
    """The template's user, home and working directory, as the runner recorded them."""
    return runner.identities.of(sandbox_id)


# --- Terminals (PTY) and ingress ------------------------------------------------------------


def pty_info(terminal: Terminal) -> pty_models.PtySessionInfo:
    return pty_models.PtySessionInfo(
        id=terminal.id, cwd=terminal.cwd, envs=terminal.envs, cols=terminal.cols,
        rows=terminal.rows, created_at=iso(terminal.created_at),
        active=terminal.active, lazy_start=terminal.lazy_start)


def pty_create(runner: Runner, sandbox_id: str,
               body: pty_models.PtyCreateRequest) -> pty_models.PtySessionInfo:
    return pty_info(runner.terminals.create(sandbox_id, body.id, cwd=body.cwd, envs=body.envs,
                                            cols=body.cols, rows=body.rows,
                                            lazy_start=body.lazy_start))


def pty_list(runner: Runner, sandbox_id: str) -> pty_models.PtyListResponse:
    items = runner.terminals.list(sandbox_id)
    return pty_models.PtyListResponse(items=[pty_info(t) for t in items])


def pty_get(runner: Runner, sandbox_id: str, session_id: str) -> pty_models.PtySessionInfo:
    with translate_errors():
        return pty_info(runner.terminals.get(sandbox_id, session_id))


def pty_resize(runner: Runner, sandbox_id: str, session_id: str,
               body: pty_models.PtyResizeRequest) -> pty_models.PtySessionInfo:
    return pty_info(runner.terminals.resize(sandbox_id, session_id, body.cols, body.rows))


def pty_delete(runner: Runner, sandbox_id: str, session_id: str) -> None:
    runner.terminals.delete(sandbox_id, session_id)


def pty_attach(runner: Runner, sandbox_id: str, session_id: str) -> tuple[int, int]:
    """The session's shell started (a lazy one's first connection), and its pipes: the
    caller's own copies (input, output), non-blocking, for the caller to close."""
    return runner.terminals.attach(sandbox_id, session_id).open_pipes()


def connect_port(runner: Runner, sandbox_id: str, port: int) -> socket.socket:
    """A connection to ``port`` on the sandbox's own loopback (a preview request's)."""
    try:
        return runner.ingress.connect(sandbox_id, port, timeout=spec.PREVIEW_CONNECT_TIMEOUT_S)
    except TimeoutError:
        raise ApiError(504, f"port {port} in the sandbox did not accept in time") from None
    except OSError:
        raise ApiError(502, f"nothing answers on port {port} in the sandbox") from None
