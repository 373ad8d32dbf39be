"""The dynamic providers: Pulumi's check, diff, create, read, update and delete, mapped to
``client.py``, one module per resource.

* ``normal_form`` -- the form every resource's inputs are checked and compared in: unknowns,
  engine floats, inputs of our own, comparison, credential fingerprints.
* ``base`` -- what every provider shares: a client per call from the stack's credentials,
  waiting with backoff, deleting what a failed create made, the diff answer, errors.
* ``sandbox`` (with ``mounts``, the sandbox's mounts) -- ``leap0.Sandbox``.
* ``template`` -- ``leap0.Template`` (a container image uploaded as a template).
* ``snapshot`` -- ``leap0.Snapshot``.

The engine pickles each provider into its resources' state by reference (dill: module path
and class name), and destroy and refresh use the one in state, not the program's. So every
provider class is an attribute of this package and says so in its ``__module__``: stacks
made before the split hold ``pulumi_leap0.provider.SandboxProvider``, and the code behind a
name can move without stranding them.
"""

from __future__ import annotations

from pulumi_leap0.provider.base import (
    CREATE_TIMEOUT_DEFAULT_S,
    DELETE_TIMEOUT_S,
    FIRST_POLL_S,
    MAX_POLL_S,
    ProviderError,
)
from pulumi_leap0.provider.mounts import (
    FINGERPRINT,
    credentials_fingerprint,
    mount_state,
    mount_states,
)
from pulumi_leap0.provider.sandbox import (
    COMPUTED_OUTPUTS,
    PROVIDER_INPUTS,
    SandboxProvider,
    normal_inputs,
)
from pulumi_leap0.provider.snapshot import SnapshotProvider
from pulumi_leap0.provider.template import TemplateProvider

#: The name the sandbox provider's failures had before there was more than one provider.
SandboxError = ProviderError

__all__ = [
    "COMPUTED_OUTPUTS",
    "CREATE_TIMEOUT_DEFAULT_S",
    "DELETE_TIMEOUT_S",
    "FINGERPRINT",
    "FIRST_POLL_S",
    "MAX_POLL_S",
    "PROVIDER_INPUTS",
    "ProviderError",
    "SandboxError",
    "SandboxProvider",
    "SnapshotProvider",
    "TemplateProvider",
    "credentials_fingerprint",
    "mount_state",
    "mount_states",
    "normal_inputs",
]
