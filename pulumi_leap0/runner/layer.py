"""A sandbox's storage on the host, under its runtime directory ``/run/leap0/<scope>/<id>/``.

The runtime directory is a small tmpfs of its own (``make_runtime``), root's, 0710 and of
the sandbox's host group, and so is ``layer/``: nothing of a sandbox is reachable by the
host's other users, who would otherwise read and plant files in its 1777 ``/tmp``. Its own
uid traverses them because bubblewrap, which runs as that uid, resolves the path of each
fd it binds from (``launch.HostFds``) before it binds. Being a file system's root, the
runtime directory also keeps the host's paths out of the sandbox's
``/proc/self/mountinfo``: a bind from it shows as ``/etc/passwd`` or ``/mnt``, not as
``/run/leap0/<scope>/<id>/...``.

``layer/`` is a size-limited tmpfs, the sandbox's only writable storage (``/home/<user>``,
``/tmp``, ``/var/tmp``, ``/dev/shm``); ``stop`` keeps it, ``destroy`` removes it. tmpfs pages
are charged to the memory cgroup of whoever writes them, so the sandbox pays for its own
disk, and ``size=`` is the disk limit. ``mnt/`` is a shared mount whose sub-mounts (the
object-storage mounts, ``mounts.py``) propagate into the sandbox at ``STAGING_SANDBOX``.

Without root none is a mount: the layer is a plain directory (no size limit) and there
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


#: The runtime tmpfs holds the generated /etc files, the egress CA bundle and mount points.
RUNTIME_OPTIONS = "size=8m,nr_inodes=4096,mode=0710"


def _only_for(path: Path, owner: HostIdentity) -> None:
    """Root's, traversable by ``owner``'s group alone (no-op as a plain user: its own)."""
    if os.geteuid() == 0:
        os.chown(path, 0, owner.gid)
    os.chmod(path, 0o710)


def make_runtime(runtime_dir: Path, owner: HostIdentity, *, privileged: bool) -> None:
    """The runtime directory, a tmpfs unless it holds mounts already: this one's, kept
    across ``stop``, or a layer kept from before runtime directories were mounts (left as
    it is, with its host paths, until the sandbox is destroyed)."""
    runtime_dir.mkdir(mode=0o700, exist_ok=True)
    if privileged and not sysutil.mountpoints_under(runtime_dir):
        sysutil.mount("leap0-run", runtime_dir, "tmpfs", sysutil.MS_NOSUID | sysutil.MS_NODEV,
                      RUNTIME_OPTIONS)
    _only_for(runtime_dir, owner)


def make_layer(runtime_dir: Path, disk_mib: int, owner: HostIdentity, *,
               privileged: bool) -> Path:
    """The writable layer, made unless it survived a ``stop`` (then kept as it is)."""
    layer = runtime_dir / "layer"
    fresh = not layer.is_dir()
    layer.mkdir(mode=0o700, exist_ok=True)
    if privileged and not sysutil.is_mountpoint(layer):
        sysutil.mount("leap0-layer", layer, "tmpfs", sysutil.MS_NOSUID | sysutil.MS_NODEV,
                      f"size={disk_mib}m,mode=0700")
        fresh = True
    _only_for(layer, owner)
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
