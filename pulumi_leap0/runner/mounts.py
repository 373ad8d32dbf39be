"""Object-storage mounts inside running sandboxes: the hook the FUSE work plugs into.

Contract between the runner and this module:

``attach(handle: SandboxHandle, config: MountConfig) -> None``
    Called by ``Runner.start`` for each configured mount (after the sandbox is up) and by
    ``Runner.mount``. ``handle.init_pid`` is the sandbox's init as seen from the host;
    its mount namespace is ``/proc/<init_pid>/ns/mnt`` and its root ``/proc/<init_pid>/root``.
    ``handle.staging_host`` is a host directory that is a *shared* mount propagating into
    the sandbox at ``handle.staging_sandbox``: a FUSE file system mounted on the host at
    ``staging_host/<mount id>`` appears inside at ``staging_sandbox/<mount id>``, from where
    it can be bind-mounted to ``config.mount_path`` with
    ``nsenter --target <init_pid> --mount``. Credentials stay on the host (pass them to the
    FUSE daemon through its environment or a 0600 file under ``handle.state_dir``), never
    into the sandbox. Raise ``RunnerError`` on failure, after undoing partial work.
``detach(handle: SandboxHandle, mount_id: str) -> None``
    Undo ``attach``; idempotent.
``detach_all(handle: SandboxHandle) -> None``
    Called by stop/destroy before processes are killed and by recover for orphans.

What it does today: attaching refuses with a clear error, detaching is a no-op, so a
sandbox asked to start with mounts fails to start (and is cleaned up) instead of starting
without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pulumi_leap0.runner.errors import RunnerError
from pulumi_leap0.runner.types import MountConfig

AVAILABLE = False


@dataclass(frozen=True)
class SandboxHandle:
    sandbox_id: str
    init_pid: int
    state_dir: Path
    staging_host: Path
    staging_sandbox: str
    uid: int
    gid: int


def attach(handle: SandboxHandle, config: MountConfig) -> None:
    del handle, config
    raise RunnerError("object-storage mounts are not available yet")


def detach(handle: SandboxHandle, mount_id: str) -> None:
    del handle, mount_id


def detach_all(handle: SandboxHandle) -> None:
    del handle
