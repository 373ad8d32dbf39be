"""The runner's value types: what the backend hands in and what it gets back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pulumi_leap0 import spec
from pulumi_leap0.runner.errors import RunnerError

if TYPE_CHECKING:  # images.py runs its pulls in the network fence, which needs these types
    from pulumi_leap0.runner.images import Image


def check_env(env: Mapping[str, str]) -> None:
    """What the runner itself refuses, whatever the caller checked: an exec hands the
    variables to a shell inside the sandbox as ``export NAME='value'`` (``exec.py``), and
    bubblewrap to the init as C strings, so names are the contract's shell names and
    values hold no NUL."""
    for name, value in env.items():
        if not spec.ENV_NAME_RE.match(name) or "\x00" in value:
            raise RunnerError("environment variable names must be letters, digits and '_', "
                              "not starting with a digit, and values must not contain NUL")


@dataclass(frozen=True)
class MountConfig:
    """An object-storage bucket to show inside a sandbox at ``mount_path``.

    The credentials stay on the host side: they are handed to the mount helper and never
    written into the sandbox, its environment or any log.
    """

    id: str
    bucket: str
    mount_path: str
    endpoint: str
    prefix: str = ""
    read_only: bool = True
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SandboxConfig:
    """Everything ``Runner.start`` needs to boot a sandbox.

    ``network_policy`` is the contract's model, header values included; the runner passes it
    to ``network.setup`` untouched. ``None`` means the contract default (allow-all).
    ``disk_mib`` overrides the template's writable-layer size. ``image``: the root of a
    user template (a container image, ``images.Image``), ``template`` then only its name;
    without it ``template`` names a system template of the runner's registry. ``seed`` is a
    snapshot's archive (``Snapshots.take``): a fresh writable layer starts with its files,
    unpacked before the init starts and counted against ``disk_mib``.
    """

    id: str
    template: str
    vcpu: int = 1
    memory_mib: int = 1024
    env: Mapping[str, str] = field(default_factory=dict)
    network_policy: spec.NetworkPolicy | None = None
    mounts: Sequence[MountConfig] = ()
    disk_mib: int | None = None
    image: Image | None = None
    seed: Path | None = None

    def __post_init__(self) -> None:
        # Callers pass lists and dicts; freeze them so a config cannot change under a start.
        object.__setattr__(self, "mounts", tuple(self.mounts))
        object.__setattr__(self, "env", dict(self.env))
        if self.vcpu < 1:
            raise RunnerError("vcpu must be at least 1")
        if self.memory_mib < 16:
            raise RunnerError("memory_mib must be at least 16")


@dataclass(frozen=True)
class ExecResult:
    """The outcome of ``Runner.exec``.

    ``exit_code`` is the command's exit status; a command killed by signal N reports
    ``128 + N`` (an out-of-memory kill is 137), as a shell would. When the timeout expired
    the whole process tree of the call was killed, ``timed_out`` is true and ``exit_code`` is
    124, the convention of coreutils ``timeout``.
    """

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False


@dataclass(frozen=True)
class SandboxIdentity:
    """Who a sandbox's processes are: its user (``uid`` inside), that user's home, and the
    working directory its commands start in."""

    user: str
    uid: int
    home: str
    workdir: str


@dataclass(frozen=True)
class SandboxStats:
    """Kernel accounting for one sandbox's cgroup (zeros where no cgroup exists)."""

    cpu_usage_ns: int
    memory_bytes: int
    pids: int
