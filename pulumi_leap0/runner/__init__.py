"""Real, isolated, resource-limited sandboxes on Linux; knows nothing about HTTP.

The backend drives sandboxes through ``Runner`` only (start, exec, freeze, thaw, stop,
destroy, recover, mount, unmount, the file helpers, capabilities). Module map:
``core`` the runner, ``cgroups`` limits and the freezer (v1 and v2), ``templates`` root
file systems and defaults, ``files`` path-safe file access inside a sandbox,
``network`` namespaces and egress policy (``egress`` the filter process of custom
policies), ``mounts`` object-storage mounts,
``capabilities`` the report of what this host can guarantee.
"""

from pulumi_leap0.runner.capabilities import Capabilities
from pulumi_leap0.runner.cgroups import Cgroups, Limits
from pulumi_leap0.runner.core import (
    DEFAULT_EXEC_TIMEOUT_S,
    EXIT_TIMED_OUT,
    SANDBOX_HOST_UID_BASE,
    Runner,
    short_hash,
)
from pulumi_leap0.runner.errors import (
    RunnerError,
    SandboxFrozenError,
    SandboxNotFoundError,
    SandboxNotRunningError,
)
from pulumi_leap0.runner.templates import (
    DEFAULT_DISK_MIB,
    DEFAULT_TEMPLATE,
    Template,
    TemplateRegistry,
)
from pulumi_leap0.runner.types import (
    ExecResult,
    FileInfo,
    MountConfig,
    SandboxConfig,
    SandboxStats,
)

__all__ = [
    "DEFAULT_DISK_MIB",
    "DEFAULT_EXEC_TIMEOUT_S",
    "DEFAULT_TEMPLATE",
    "EXIT_TIMED_OUT",
    "SANDBOX_HOST_UID_BASE",
    "Capabilities",
    "Cgroups",
    "ExecResult",
    "FileInfo",
    "Limits",
    "MountConfig",
    "Runner",
    "RunnerError",
    "SandboxConfig",
    "SandboxFrozenError",
    "SandboxNotFoundError",
    "SandboxNotRunningError",
    "SandboxStats",
    "Template",
    "TemplateRegistry",
    "short_hash",
]
