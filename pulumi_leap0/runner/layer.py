"""A sandbox's storage on the host, under its runtime directory ``/run/leap0/<scope>/<id>/``.

``layer/`` is a size-limited tmpfs, the sandbox's only writable storage (``/home/<user>``,
``/tmp``, ``/var/tmp``, ``/dev/shm``); ``stop`` keeps it, ``destroy`` removes it. tmpfs pages
are charged to the memory cgroup of whoever writes them, so the sandbox pays for its own
disk, and ``size=`` is the disk limit. ``mnt/`` is a shared mount whose sub-mounts (the
object-storage mounts, ``mounts.py``) propagate into the sandbox at ``STAGING_SANDBOX``.

Without root neither is a mount: the layer is a plain directory (no size limit) and there
are no object-storage mounts.
"""

from __future__ import annotations

import os
from pathlib import Path

from pulumi_leap0.runner import sysutil
from pulumi_leap0.runner.identity import HostIdentity

STAGING_SANDBOX = "/run/leap0/mounts"
#: The layer's parts (``layer/<name>``), bound into the sandbox by ``launch.bwrap_options``.
PARTS = (("home", 0o750), ("tmp", 0o1777), ("vartmp", 0o1777), ("shm", 0o1777))


def make_layer(runtime_dir: Path, disk_mib: int, owner: HostIdentity, *,
               privileged: bool) -> Path:
    """The writable layer, made unless it survived a ``stop`` (then kept as it is)."""
    layer = runtime_dir / "layer"
    fresh = not layer.is_dir()
    layer.mkdir(mode=0o711, exist_ok=True)
    if privileged and not sysutil.is_mountpoint(layer):
        sysutil.mount("leap0-layer", layer, "tmpfs", sysutil.MS_NOSUID | sysutil.MS_NODEV,
                      f"size={disk_mib}m,mode=0711")
        fresh = True
    if fresh:
        for sub, mode in PARTS:
            path = layer / sub
            path.mkdir(exist_ok=True)
            os.chmod(path, mode)
            os.chown(path, owner.uid, owner.gid)
    return layer


def make_staging(runtime_dir: Path, *, privileged: bool) -> Path | None:
    staging = runtime_dir / "mnt"
    staging.mkdir(mode=0o755, exist_ok=True)
    if not privileged:
        return None
    if not sysutil.is_mountpoint(staging):
        sysutil.mount(str(staging), staging, None, sysutil.MS_BIND)
        sysutil.mount("none", staging, None, sysutil.MS_SHARED)
    return staging


def unmount(runtime_dir: Path, *, keep_layer: bool) -> None:
    """After every sandbox process is dead: what is left mounted in ``mnt/``, and the layer
    itself unless it is kept for the next ``start``."""
    for point in sysutil.mountpoints_under(runtime_dir / "mnt"):
        sysutil.umount(point)
    if not keep_layer:
        for point in sysutil.mountpoints_under(runtime_dir):
            sysutil.umount(point)
