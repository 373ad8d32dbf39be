"""Per-sandbox network namespaces: the hook the egress-policy work plugs into.

Every sandbox runs in its own network namespace, created with ``ip netns add`` so it is
visible to operators (``ip netns list``) and cleanable by name. The runner starts the
sandbox inside ``NetworkHandle.netns_path`` (``nsenter --net=<path>`` before bubblewrap),
so bubblewrap does not unshare the network itself.

Contract between the runner and this module (stable; the policy implementation may change
everything behind it):

``setup(sandbox_id, policy, state_dir, *, scope) -> NetworkHandle``
    Called by ``Runner.start`` before any sandbox process exists. ``policy`` is the
    contract's ``NetworkPolicy`` (``mode``: allow-all | deny-all | custom, ``allow_domains``,
    ``allow_cidrs``, ``transforms``) or None for the default. ``state_dir`` is the
    sandbox's private host-side directory (never visible inside the sandbox): put proxy
    sockets, CA keys and nftables rule files there. Return the namespace to join,
    environment variables every sandbox process must get (e.g. ``HTTPS_PROXY``), and host
    files to bind read-only into the sandbox as ``(host_path, sandbox_path)`` (e.g. the
    per-sandbox CA bundle). On failure raise ``RunnerError`` after undoing what it made.
``teardown(sandbox_id, *, scope)``
    Called by stop/destroy/recover after every sandbox process is dead. Idempotent.
``list_netns(scope) -> list[str]``
    Sandbox ids that have a namespace of this runner scope, for orphan recovery.

What it does today: loopback up and nothing else, for every policy. That is deny-all: a
sandbox can reach only itself. Allow-all and custom policies therefore fail closed until
the policy work lands; ``POLICY_ENFORCED`` says so and the capability report repeats it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulumi_leap0.runner.errors import RunnerError

NETNS_DIR = Path("/run/netns")
PREFIX = "leap0-"
IP = "ip"
# False while every policy is served as loopback-only (deny-all); the policy work flips it.
POLICY_ENFORCED = False
_HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


@dataclass(frozen=True)
class NetworkHandle:
    netns_name: str
    netns_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_ro_binds: list[tuple[Path, str]] = field(default_factory=list)


def netns_name(sandbox_id: str, scope: str) -> str:
    return f"{PREFIX}{scope}-{sandbox_id}"


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IP, *args], env=_HOST_ENV, capture_output=True, text=True, check=False, timeout=30
    )


def setup(sandbox_id: str, policy: Any, state_dir: Path, *, scope: str) -> NetworkHandle:
    """Create the sandbox's namespace with loopback up (see the module docstring)."""
    del policy, state_dir  # every policy is loopback-only until the policy work lands
    name = netns_name(sandbox_id, scope)
    path = NETNS_DIR / name
    if path.exists():
        # Left over from a crash between setup and teardown: start from a clean namespace.
        teardown(sandbox_id, scope=scope)
    made = _ip("netns", "add", name)
    if made.returncode != 0:
        raise RunnerError(f"could not create network namespace: {made.stderr.strip()}")
    up = _ip("-n", name, "link", "set", "lo", "up")
    if up.returncode != 0:
        teardown(sandbox_id, scope=scope)
        raise RunnerError(f"could not bring up loopback: {up.stderr.strip()}")
    return NetworkHandle(netns_name=name, netns_path=path)


def teardown(sandbox_id: str, *, scope: str) -> None:
    name = netns_name(sandbox_id, scope)
    path = NETNS_DIR / name
    if not path.exists():
        return
    done = _ip("netns", "delete", name)
    if done.returncode != 0 and path.exists():
        # ip refuses when the mount is already gone but the file stays behind.
        from pulumi_leap0.runner import sysutil

        sysutil.umount(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def list_netns(scope: str) -> list[str]:
    prefix = f"{PREFIX}{scope}-"
    try:
        names = os.listdir(NETNS_DIR)
    except OSError:
        return []
    return sorted(n[len(prefix):] for n in names if n.startswith(prefix))
