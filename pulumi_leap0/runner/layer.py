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

A sandbox of a container image (``template.image``) also has ``root/``: an overlay whose
lower layer is the image's root, shared read-only by every sandbox of the image, and whose
upper layer (``layer/upper``, with overlayfs's ``layer/work``) is on the layer's tmpfs, so
its writes anywhere in ``/`` count against ``disk`` and are its own (``make_root``).

Without root neither is a mount: the layer is a plain directory (no size limit) and there
are no object-storage mounts.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from pulumi_leap0.runner import sysutil
from pulumi_leap0.runner.errors import RunnerError
from pulumi_leap0.runner.identity import HostIdentity
from pulumi_leap0.runner.templates import Template

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


#: Mount points bubblewrap needs in an image's root, made by the runner beforehand: inside
#: the sandbox's user namespace the image's directories (the runner's files) are nobody's,
#: so bubblewrap, as the sandbox user, could not make them.
IMAGE_DIRS = ("proc", "dev", "tmp", "var/tmp", "run/leap0/mounts", "home", "etc")
IMAGE_FILES = ("etc/hostname", "etc/hosts", "run/leap0/ca-certificates.crt")


def make_root(runtime_dir: Path, writable: Path, template: Template, owner: HostIdentity, *,
              privileged: bool) -> Path:
    """The image's root as the sandbox's ``/``: an overlay, mounted here by the runner.

    Why the runner mounts it in the host's namespace rather than bubblewrap's
    ``--overlay`` (0.8) in the sandbox's user namespace: the image's files belong to uids
    that namespace does not map, and an overlay mounted there refuses to copy such files
    up (it cannot give the copy their owner), so the sandbox could change none of them.
    Mounted by root, copy-up keeps owner and mode, and the kernel still checks every
    access as the sandbox user. ``nosuid,nodev`` whatever the image holds; a bind into
    the sandbox keeps those flags locked."""
    if not privileged:
        raise RunnerError("sandboxes of container images need a runner running as root")
    root = runtime_dir / "root"
    root.mkdir(mode=0o700, exist_ok=True)
    if sysutil.is_mountpoint(root):
        return root
    upper, work = writable / "upper", writable / "work"
    for d in (upper, work):
        d.mkdir(mode=0o755, exist_ok=True)
    lower = str(template.rootfs)
    if any(c in lower + str(writable) for c in ",:\\"):
        raise RunnerError("overlay layer paths must not contain ',', ':' or '\\'")
    sysutil.mount("leap0-root", root, "overlay", sysutil.MS_NOSUID | sysutil.MS_NODEV,
                  f"lowerdir={lower},upperdir={upper},workdir={work},"
                  "redirect_dir=off,index=off,metacopy=off,xino=off")
    # Everything below is made through fds, never following a link of the image's: the
    # image is the tenant's, and a link resolved here, as root on the host, would lead out.
    top = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for sub in (*IMAGE_DIRS, template.home, template.workdir):
            fd = _make_dirs(top, sub)
            if fd is not None:
                os.close(fd)
        for name in IMAGE_FILES:
            _make_file(top, name)
        # The user's home and working directory are the user's, as in a container (their
        # contents stay the image's); both only in this sandbox's upper layer.
        for own in {template.home, template.workdir} - {"/"}:
            parent, _, last = own.strip("/").rpartition("/")
            fd = _make_dirs(top, parent) if parent else os.dup(top)
            if fd is None:
                continue
            with contextlib.suppress(OSError):
                os.chown(last, owner.uid, owner.gid, dir_fd=fd, follow_symlinks=False)
            os.close(fd)
    finally:
        os.close(top)
    return root


def _make_dirs(top: int, path: str) -> int | None:
    """``path`` below ``top`` made as needed, an ``O_PATH`` fd of it; None where a part of it
    is a link or no directory (then bubblewrap resolves it inside the sandbox, or fails)."""
    fd = os.dup(top)
    for part in [p for p in path.split("/") if p and p != "."]:
        if part == "..":
            os.close(fd)
            return None
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, 0o755, dir_fd=fd)
        try:
            nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = nxt
    return fd


def _make_file(top: int, path: str) -> None:
    parent, _, name = path.rpartition("/")
    fd = _make_dirs(top, parent)
    if fd is None:
        return
    try:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def exists_in(root: Path, path: str) -> bool:
    """Whether ``path`` is a regular file of the sandbox's root, resolved inside it."""
    top = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = sysutil.openat2(top, path.lstrip("/"), os.O_PATH | os.O_CLOEXEC,
                             resolve=sysutil.RESOLVE_IN_ROOT | sysutil.RESOLVE_NO_MAGICLINKS)
    except OSError:
        return False
    finally:
        os.close(top)
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


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
    # The overlay over the layer: mounted again at the next start.
    for point in sysutil.mountpoints_under(runtime_dir / "root"):
        sysutil.umount(point)
    if not keep_layer:
        for point in sysutil.mountpoints_under(runtime_dir):
            sysutil.umount(point)
