"""Who a sandbox's user is: inside (the template's user) and on the host (an unprivileged uid).

Inside, the sandbox user is ``template.uid`` in its own user namespace; bubblewrap maps it to
the host uid the init chain drops to (``setpriv``), which holds no capabilities anywhere.
Today that is ``SANDBOX_HOST_UID_BASE + template.uid``, one host uid for every sandbox of a
template; without root it is the runner's own uid. The sandbox sees generated ``/etc``
identity files naming only its own user, root and nobody, never the host's accounts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pulumi_leap0.runner.templates import Template

SANDBOX_HOST_UID_BASE = 2_000_000_000
#: Generated per sandbox under ``<runtime dir>/etc`` and bound over the template's.
ETC_FILES = ("passwd", "group", "hostname", "hosts")


@dataclass(frozen=True)
class HostIdentity:
    uid: int
    gid: int
    #: Whether ``uid``/``gid`` are the sandbox's own (root runner) or the runner's.
    dedicated: bool


def host_identity(template: Template) -> HostIdentity:
    if os.geteuid() != 0:
        return HostIdentity(uid=os.geteuid(), gid=os.getegid(), dedicated=False)
    host = SANDBOX_HOST_UID_BASE + template.uid
    return HostIdentity(uid=host, gid=host, dedicated=True)


def owner_names(user: str, uid: int, gid: int, *, dedicated: bool) -> dict[int, str]:
    """Host ids to the names the sandbox knows them by, for file listings. The runner's own
    group (unprivileged) is not the sandbox user's to name."""
    names = {uid: user, 0: "root"}
    if dedicated:
        names[gid] = user
    return names


def write_etc(runtime_dir: Path, sandbox_id: str, template: Template) -> Path:
    etc = runtime_dir / "etc"
    etc.mkdir(mode=0o755, exist_ok=True)
    u, name, home = template.uid, template.user, template.home
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        f"{name}:x:{u}:{u}:{name}:{home}:/bin/sh\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (etc / "group").write_text(f"root:x:0:\n{name}:x:{u}:\nnogroup:x:65534:\n")
    (etc / "hostname").write_text(f"{sandbox_id}\n")
    (etc / "hosts").write_text(f"127.0.0.1\tlocalhost {sandbox_id}\n::1\tlocalhost\n")
    for f in etc.iterdir():
        os.chmod(f, 0o644)
    return etc
