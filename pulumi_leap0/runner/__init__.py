"""Real, isolated, resource-limited sandboxes on Linux; knows nothing about HTTP.

The backend drives sandboxes through ``Runner`` only (start, exec, freeze, thaw, stop,
destroy, recover, mount, unmount, the file helpers, capabilities). Module map, one concern
each:

- ``core``: ``Runner``, the lifecycle; its docstring tells a sandbox's life step by step.
- ``state``: the per-sandbox record (``state.json``) a restarted backend finds it by.
- ``identity``: the sandbox's user, inside and on the host (a uid of its own, from
  ``UidPool``), and its ``/etc`` identity files.
- ``seccomp``: the system call filter every sandbox process runs under.
- ``layer``: the writable layer and the staging mount, on the host.
- ``launch``: the init's process chain, as argv (cgroup join, netns, uid drop, bubblewrap).
- ``exec``: one command in a running sandbox, and killing its process tree on timeout.
- ``cgroups``: limits and the freezer (v1 and v2), or ``NoCgroups`` where there are none.
- ``network``: namespaces and egress policy; ``egress_filter`` runs the filter process of
  custom policies, which is ``egress``.
- ``mounts``: object-storage mounts.
- ``filecalls``: file calls, host side, through each sandbox's file helper (``fileserver``),
  a process of the sandbox that does them (``files``) over framed sockets (``frames``).
- ``templates``: root file systems and defaults. ``capabilities``: what this host can
  guarantee. ``sysutil``: system calls the standard library lacks. ``types``, ``errors``:
  what crosses to the backend.
"""

# Loaded on first use: the egress filter (``runner.egress``), a process of its own per
# sandbox, imports this package too and should not pay for the rest of the runner.
from __future__ import annotations

from typing import TYPE_CHECKING

from pulumi_leap0._lazy import lazy_exports

if TYPE_CHECKING:
    from pulumi_leap0.runner.capabilities import (
        Capabilities,
    )
    from pulumi_leap0.runner.cgroups import (
        Cgroups,
        Limits,
    )
    from pulumi_leap0.runner.core import (
        Runner,
        short_hash,
    )
    from pulumi_leap0.runner.errors import (
        RunnerError,
        SandboxFrozenError,
        SandboxNotFoundError,
        SandboxNotRunningError,
    )
    from pulumi_leap0.runner.exec import (
        DEFAULT_EXEC_TIMEOUT_S,
        EXIT_TIMED_OUT,
    )
    from pulumi_leap0.runner.identity import (
        SANDBOX_HOST_UID_BASE,
    )
    from pulumi_leap0.runner.templates import (
        DEFAULT_DISK_MIB,
        DEFAULT_TEMPLATE,
        Template,
        TemplateRegistry,
    )
    from pulumi_leap0.runner.types import (
        ExecResult,
        MountConfig,
        SandboxConfig,
        SandboxStats,
    )
    from pulumi_leap0.spec import FileInfo

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

_LAZY = {
    "Capabilities": "pulumi_leap0.runner.capabilities",
    "Cgroups": "pulumi_leap0.runner.cgroups",
    "Limits": "pulumi_leap0.runner.cgroups",
    "DEFAULT_EXEC_TIMEOUT_S": "pulumi_leap0.runner.exec",
    "EXIT_TIMED_OUT": "pulumi_leap0.runner.exec",
    "SANDBOX_HOST_UID_BASE": "pulumi_leap0.runner.identity",
    "Runner": "pulumi_leap0.runner.core",
    "short_hash": "pulumi_leap0.runner.core",
    "RunnerError": "pulumi_leap0.runner.errors",
    "SandboxFrozenError": "pulumi_leap0.runner.errors",
    "SandboxNotFoundError": "pulumi_leap0.runner.errors",
    "SandboxNotRunningError": "pulumi_leap0.runner.errors",
    "DEFAULT_DISK_MIB": "pulumi_leap0.runner.templates",
    "DEFAULT_TEMPLATE": "pulumi_leap0.runner.templates",
    "Template": "pulumi_leap0.runner.templates",
    "TemplateRegistry": "pulumi_leap0.runner.templates",
    "ExecResult": "pulumi_leap0.runner.types",
    "FileInfo": "pulumi_leap0.spec",
    "MountConfig": "pulumi_leap0.runner.types",
    "SandboxConfig": "pulumi_leap0.runner.types",
    "SandboxStats": "pulumi_leap0.runner.types",
}


__getattr__ = lazy_exports(__name__, _LAZY)
