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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeAlias

from pulumi_leap0 import spec
from pulumi_leap0.backend import models
from pulumi_leap0.backend.errors import ApiError, invalid
from pulumi_leap0.backend.store import MountRecord, SandboxRecord
from pulumi_leap0.runner.core import Runner as LinuxRunner
from pulumi_leap0.runner.errors import (
    RunnerError,
    SandboxFrozenError,
    SandboxNotFoundError,
    SandboxNotRunningError,
)
from pulumi_leap0.runner.network import EgressSettings
from pulumi_leap0.runner.types import FileInfo, MountConfig, SandboxConfig

__all__ = [
    "LinuxRunner",
    "Runner",
    "RunnerError",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "make_runner",
]


#: The runner the backend drives. The real class, not a Protocol: go-to-definition on
#: ``lifecycle.runner.start`` lands on the code that makes the sandbox, and mypy checks every
#: call against it. The seam stays narrow by rule instead: only this module and
#: ``lifecycle.py`` hold a runner, and only this module imports runner types. Failures are
#: ``RunnerError`` or one of its kinds (``runner/errors.py``), with messages that never carry
#: credentials; ``translate_errors`` and the lifecycle make them answers.
Runner: TypeAlias = LinuxRunner


def make_runner(root_dir: Path, *, egress_resolver: str | None = None,
                egress_ca_file: Path | None = None,
                allow_mount_endpoints: Sequence[str] = ()) -> LinuxRunner:
    """The Linux runner. ``egress_resolver`` ("ip:port") and ``egress_ca_file`` are how the
    egress filters of custom policies resolve names and verify upstream TLS (defaults: the
    host's resolver and trust store); mounts resolve their endpoints with the same resolver.
    ``allow_mount_endpoints`` are CIDRs mount endpoints may reach although the address
    guard refuses them."""
    egress = EgressSettings(resolver=egress_resolver, upstream_ca_file=egress_ca_file,
                            allow_mount_endpoints=tuple(allow_mount_endpoints))
    return LinuxRunner(root_dir, egress=egress)


def capability_report(runner: Runner) -> dict[str, object]:
    """The runner's capabilities as JSON-ready values (``/healthz``, ``doctor``)."""
    return dataclasses.asdict(runner.capabilities())


# --- Configs --------------------------------------------------------------------------------


def sandbox_config(record: SandboxRecord) -> SandboxConfig:
    return SandboxConfig(
        id=record.id,
        template=record.template_name,
        vcpu=record.vcpu,
        memory_mib=record.memory,
        env=dict(record.env_vars),
        network_policy=record.network_policy or spec.NetworkPolicy(mode="allow-all"),
        mounts=[mount_config(m) for m in record.mounts],
        disk_mib=record.disk,
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


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Runner and OS errors as API answers. Messages name the kind, never the values."""
    try:
        yield
    except (SandboxNotRunningError, SandboxFrozenError, SandboxNotFoundError):
        raise ApiError(409, "the sandbox is not running") from None
    except FileNotFoundError:
        raise ApiError(404, "no such file or directory") from None
    except FileExistsError:
        raise ApiError(409, "the path already exists") from None
    except IsADirectoryError:
        raise invalid("path", "is a directory") from None
    except NotADirectoryError:
        raise invalid("path", "is not a directory") from None
    except PermissionError:
        raise ApiError(403, "permission denied") from None
    except OSError as exc:
        if exc.errno == 39:  # ENOTEMPTY
            raise invalid("recursive", "must be true to delete a non-empty directory") from None
        raise
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


def _file_info(info: FileInfo) -> models.FileInfo:
    return models.FileInfo.model_validate(info, from_attributes=True)


def list_dir(runner: Runner, sandbox_id: str, body: models.LsRequest) -> models.LsResponse:
    items = runner.list_dir(
        sandbox_id, body.path, recursive=body.recursive, exclude=list(body.exclude)
    )
    return models.LsResponse(items=[_file_info(i) for i in items])


def stat(runner: Runner, sandbox_id: str, body: models.PathRequest) -> models.FileInfo:
    return _file_info(runner.stat(sandbox_id, body.path))


def mkdir(runner: Runner, sandbox_id: str, body: models.MkdirRequest) -> None:
    runner.mkdir(
        sandbox_id, body.path, recursive=body.recursive, mode=int(body.permissions or "755", 8)
    )


def write_file(
    runner: Runner, sandbox_id: str, query: models.WriteFileQuery, content: bytes
) -> None:
    mode = int(query.permissions, 8) if query.permissions else None
    runner.write_file(sandbox_id, query.path, content, mode=mode)


def read_file(runner: Runner, sandbox_id: str, body: models.ReadFileRequest) -> bytes:
    data = runner.read_file(sandbox_id, body.path)
    if body.offset:
        data = data[body.offset :]
    if body.limit is not None:
        data = data[: body.limit]
    if body.head is not None:
        data = b"".join(data.splitlines(keepends=True)[: body.head])
    if body.tail is not None:
        data = b"".join(data.splitlines(keepends=True)[-body.tail :]) if body.tail else b""
    return data


def delete(runner: Runner, sandbox_id: str, body: models.DeleteRequest) -> None:
    runner.delete(sandbox_id, body.path, recursive=body.recursive)


def exists(runner: Runner, sandbox_id: str, body: models.PathRequest) -> models.ExistsResponse:
    return models.ExistsResponse(exists=runner.exists(sandbox_id, body.path))
