"""Leap0 sandboxes as Pulumi infrastructure.

``import pulumi_leap0 as leap0`` gives the resources (``leap0.Sandbox``, ``leap0.Template``,
``leap0.Snapshot``) and their argument types. They are loaded on first use, so the backend
and the client do not pay for importing the Pulumi SDK.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pulumi_leap0._lazy import lazy_exports

if TYPE_CHECKING:
    from pulumi_leap0.provider import SandboxProvider, SnapshotProvider, TemplateProvider
    from pulumi_leap0.resource import (
        MountArgs,
        NetworkPolicyArgs,
        RegistryCredentialsArgs,
        Sandbox,
        SandboxArgs,
        Snapshot,
        Template,
        TransformArgs,
    )

__all__ = [
    "MountArgs",
    "NetworkPolicyArgs",
    "RegistryCredentialsArgs",
    "Sandbox",
    "SandboxArgs",
    "SandboxProvider",
    "Snapshot",
    "SnapshotProvider",
    "Template",
    "TemplateProvider",
    "TransformArgs",
]

_LAZY = {
    "SandboxProvider": "pulumi_leap0.provider",
    "SnapshotProvider": "pulumi_leap0.provider",
    "Snapshot": "pulumi_leap0.resource",
    "Sandbox": "pulumi_leap0.resource",
    "SandboxArgs": "pulumi_leap0.resource",
    "MountArgs": "pulumi_leap0.resource",
    "NetworkPolicyArgs": "pulumi_leap0.resource",
    "TransformArgs": "pulumi_leap0.resource",
    "Template": "pulumi_leap0.resource",
    "RegistryCredentialsArgs": "pulumi_leap0.resource",
    "TemplateProvider": "pulumi_leap0.provider",
}


__getattr__ = lazy_exports(__name__, _LAZY)
