"""Templates: a root file system plus the defaults a sandbox starts with.

A sandbox sees its template's root read-only; only its own writable layer is writable
(``/home/<user>``, ``/tmp``, ``/var/tmp``, ``/dev/shm``), so writing to ``/etc`` or
``/usr`` fails inside the sandbox. The builtin ``system/debian:bookworm`` is the host's own
root file system (this runner targets Debian hosts): its /usr, /etc (minus secrets), /opt and
the /bin, /lib... links, and nothing else of the host.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pulumi_leap0.runner.errors import RunnerError
from pulumi_leap0.runner.images import Image

DEFAULT_TEMPLATE = "system/debian:bookworm"
DEFAULT_ALIASES = ("system/base", "system/debian")
DEFAULT_DISK_MIB = 1024
DEFAULT_USER = "user"
DEFAULT_UID = 1000
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_NAME = re.compile(r"^[a-z0-9][a-z0-9._/:-]{0,127}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")

# A sandbox's root is an empty read-only tmpfs into which only these top-level entries of the
# template root are bound (read-only). An allow-list, not a deny-list: whatever else a host
# keeps at its top level (/root, /home, /srv, /work, /mnt, /var with its service state...)
# is simply absent, and no host mount below those is ever copied into a sandbox.
ROOT_ENTRIES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "opt")
# Inside the bound /etc: secrets and host identity, covered by an empty file or directory.
HIDDEN_FILES = (
    "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers",
    "/etc/machine-id", "/etc/.pwd.lock",
)
HIDDEN_DIRS = ("/etc/ssh", "/etc/sudoers.d", "/etc/ssl/private", "/etc/pki/private")


@dataclass(frozen=True)
class Template:
    """``image``: a container image's root (``images.py``), the sandbox's whole ``/``
    through an overlay over it (``layer.make_root``), where a system template binds only
    ``root_entries`` of the host's, read-only."""

    name: str
    rootfs: Path
    user: str = DEFAULT_USER
    uid: int = DEFAULT_UID
    workdir: str = f"/home/{DEFAULT_USER}"
    env: Mapping[str, str] = field(default_factory=dict)
    disk_mib: int = DEFAULT_DISK_MIB
    root_entries: tuple[str, ...] = ROOT_ENTRIES
    gid: int | None = None
    home_dir: str | None = None
    image: bool = False

    @property
    def home(self) -> str:
        return self.home_dir or f"/home/{self.user}"

    @property
    def group(self) -> int:
        return self.uid if self.gid is None else self.gid

    def base_env(self) -> dict[str, str]:
        env = {
            "PATH": DEFAULT_PATH,
            "HOME": self.home,
            "USER": self.user,
            "LOGNAME": self.user,
            "SHELL": "/bin/sh",
            "LANG": "C.UTF-8",
            "TMPDIR": "/tmp",
        }
        env.update(self.env)
        return env


def from_image(name: str, image: Image) -> Template:
    """A user template: the image's root, user, home, working directory and environment
    (``images.Image`` has them resolved)."""
    return Template(name=name, rootfs=image.rootfs, user=image.user, uid=image.uid,
                    gid=image.gid, home_dir=image.home, workdir=image.workdir,
                    env=dict(image.env), image=True)


class TemplateRegistry:
    """Template names to templates. ``get`` answers None for unknown names (the backend
    turns that into a 400); ``in`` works too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._templates: dict[str, Template] = {}
        builtin = Template(name=DEFAULT_TEMPLATE, rootfs=Path("/"))
        self._templates[DEFAULT_TEMPLATE] = builtin
        for alias in DEFAULT_ALIASES:
            self._templates[alias] = builtin

    def register(
        self,
        name: str,
        rootfs: Path,
        *,
        user: str = DEFAULT_USER,
        workdir: str | None = None,
        env: Mapping[str, str] | None = None,
        disk_mib: int = DEFAULT_DISK_MIB,
    ) -> Template:
        if not _NAME.match(name):
            raise RunnerError("template names are lower-case letters, digits and ._/:-")
        if not _USER.match(user):
            raise RunnerError("template user must be a plain user name")
        rootfs = Path(rootfs)
        if not rootfs.is_absolute() or not rootfs.is_dir():
            raise RunnerError("a template root file system must be an existing absolute dir")
        if not (rootfs / "bin" / "sh").exists():
            raise RunnerError("a template root file system must provide /bin/sh")
        if disk_mib < 1:
            raise RunnerError("disk_mib must be positive")
        home = f"/home/{user}"
        wd = workdir or home
        if not wd.startswith("/"):
            raise RunnerError("workdir must be absolute")
        template = Template(
            name=name, rootfs=rootfs, user=user, workdir=wd, env=dict(env or {}),
            disk_mib=disk_mib,
        )
        with self._lock:
            self._templates[name] = template
        return template

    def get(self, name: str) -> Template | None:
        with self._lock:
            return self._templates.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._templates)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
