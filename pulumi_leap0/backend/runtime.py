"""The one narrow seam between the backend and ``pulumi_leap0.runner``.

Everything the backend knows about the runner is here: how a stored sandbox becomes the
runner's ``SandboxConfig``, how a mount becomes its ``MountConfig`` (credentials included:
they go to the runner and nowhere else), how runner results become API bodies, and how
runner errors become API errors. The routes and the lifecycle never touch runner types.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pulumi_leap0 import spec
from pulumi_leap0.backend import models
from pulumi_leap0.backend.errors import ApiError, invalid
from pulumi_leap0.backend.store import MountRecord, SandboxRecord
from pulumi_leap0.runner.errors import (
    RunnerError,
    SandboxFrozenError,
    SandboxNotFoundError,
    SandboxNotRunningError,
)
from pulumi_leap0.runner.types import ExecResult, MountConfig, SandboxConfig

__all__ = [
    "Runner",
    "RunnerError",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "make_runner",
]


class Runner(Protocol):
    """What the backend calls; ``pulumi_leap0.runner.Runner`` provides it."""

    def capabilities(self) -> Any: ...
    def start(self, config: SandboxConfig) -> Any: ...
    def exec(
        self,
        sandbox_id: str,
        command: str,
        *,
        cwd: str | None = ...,
        env: Mapping[str, str] | None = ...,
        timeout: float | None = ...,
    ) -> ExecResult: ...
    def freeze(self, sandbox_id: str) -> Any: ...
    def thaw(self, sandbox_id: str) -> Any: ...
    def stop(self, sandbox_id: str) -> Any: ...
    def destroy(self, sandbox_id: str) -> Any: ...
    def is_alive(self, sandbox_id: str) -> bool: ...
    def recover(self, known_ids: Sequence[str]) -> Iterable[str]: ...
    def mount(self, sandbox_id: str, config: MountConfig) -> Any: ...
    def reconcile_mounts(self, sandbox_id: str, configs: Sequence[MountConfig]) -> Any: ...
    def reconcile_network(self, sandbox_id: str, policy: spec.NetworkPolicy) -> Any: ...
    def unmount(self, sandbox_id: str, mount_id: str) -> Any: ...
    def disk_mib(self, template: str) -> int: ...


def make_runner(root_dir: Path, *, egress_resolver: str | None = None,
                egress_ca_file: Path | None = None) -> Runner:
    """The Linux runner. ``egress_resolver`` ("ip:port") and ``egress_ca_file`` are how the
    egress filters of custom policies resolve names and verify upstream TLS (defaults: the
    host's resolver and trust store)."""
    from pulumi_leap0.runner import Runner as LinuxRunner
    from pulumi_leap0.runner.network import EgressSettings

    egress = EgressSettings(resolver=egress_resolver, upstream_ca_file=egress_ca_file)
    runner: Runner = LinuxRunner(root_dir, egress=egress)
    return runner


def has_template(runner: Runner, name: str) -> bool:
    templates = getattr(runner, "templates", None)
    if templates is None:
        return True
    with contextlib.suppress(TypeError):
        return name in templates
    return True


def capability_report(runner: Runner) -> Any:
    report = runner.capabilities()
    to_json = getattr(report, "to_json", None)
    return _plain(to_json() if callable(to_json) else report)


def _plain(value: Any) -> Any:
    """A JSON-ready copy of a capability report (dataclasses, enums, paths, sets)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if hasattr(value, "model_dump"):
        return _plain(value.model_dump())
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


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


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def execute(runner: Runner, sandbox_id: str, body: spec.ExecuteRequest) -> spec.ExecuteResponse:
    result = runner.exec(
        sandbox_id, body.command, cwd=body.cwd, env=dict(body.envs), timeout=body.timeout
    )
    stderr = _text(result.stderr)
    if getattr(result, "timed_out", False):
        stderr += f"\ncommand timed out after {body.timeout}s\n"
    return spec.ExecuteResponse(
        exit_code=int(result.exit_code), stdout=_text(result.stdout), stderr=stderr
    )


def _file_info(info: Any) -> models.FileInfo:
    if isinstance(info, Mapping):
        return models.FileInfo.model_validate(info)
    return models.FileInfo.model_validate(info, from_attributes=True)


def list_dir(runner: Any, sandbox_id: str, body: models.LsRequest) -> models.LsResponse:
    items = runner.list_dir(
        sandbox_id, body.path, recursive=body.recursive, exclude=list(body.exclude)
    )
    return models.LsResponse(items=[_file_info(i) for i in items])


def stat(runner: Any, sandbox_id: str, body: models.PathRequest) -> models.FileInfo:
    return _file_info(runner.stat(sandbox_id, body.path))


def mkdir(runner: Any, sandbox_id: str, body: models.MkdirRequest) -> None:
    runner.mkdir(
        sandbox_id, body.path, recursive=body.recursive, mode=int(body.permissions or "755", 8)
    )


def write_file(
    runner: Any, sandbox_id: str, query: models.WriteFileQuery, content: bytes
) -> None:
    mode = int(query.permissions, 8) if query.permissions else None
    runner.write_file(sandbox_id, query.path, content, mode=mode)


def read_file(runner: Any, sandbox_id: str, body: models.ReadFileRequest) -> bytes:
    data: bytes = runner.read_file(sandbox_id, body.path)
    if body.offset:
        data = data[body.offset :]
    if body.limit is not None:
        data = data[: body.limit]
    if body.head is not None:
        data = b"".join(data.splitlines(keepends=True)[: body.head])
    if body.tail is not None:
        data = b"".join(data.splitlines(keepends=True)[-body.tail :]) if body.tail else b""
    return data


def delete(runner: Any, sandbox_id: str, body: models.DeleteRequest) -> None:
    runner.delete(sandbox_id, body.path, recursive=body.recursive)


def exists(runner: Any, sandbox_id: str, body: models.PathRequest) -> models.ExistsResponse:
    return models.ExistsResponse(exists=bool(runner.exists(sandbox_id, body.path)))
