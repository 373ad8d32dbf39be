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

What each policy gets today:

* ``deny-all``: loopback and nothing else. No route, no interface: no TCP, UDP or DNS
  leaves the sandbox, whatever the program does.
* ``allow-all`` (and no policy): a veth pair to the host with a private /30 from
  ``SANDBOX_NET``, a default route through the host, and masquerade on the way out. The
  host's nftables table ``leap0`` keeps sandboxes from reaching each other and the host's
  own services (only replies come back in).
* ``custom``: served as deny-all (it fails closed) until the egress filter lands: a
  sandbox held to a list must not get more than the list. ``CUSTOM_ENFORCED`` says so and
  the capability report repeats it.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulumi_leap0.runner.errors import RunnerError

NETNS_DIR = Path("/run/netns")
PREFIX = "leap0-"
IP = "ip"
NFT = "nft"
# allow-all and deny-all are enforced; custom is served as deny-all until the egress filter.
POLICY_ENFORCED = True
CUSTOM_ENFORCED = False
_HOST_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}

#: Where sandboxes' veth addresses come from: one /30 each (host .1, sandbox .2).
SANDBOX_NET = ipaddress.IPv4Network("10.201.0.0/16")
_SLOTS = SANDBOX_NET.num_addresses // 4

# One table of our own, replaced whole in one transaction so rules never pile up:
# sandboxes reach the world, not each other and not the host (replies to their own
# connections come back through conntrack).
_NFT_RULES = f"""
table ip leap0
delete table ip leap0
table ip leap0 {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {SANDBOX_NET} ip daddr != {SANDBOX_NET} masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ip saddr {SANDBOX_NET} ip daddr {SANDBOX_NET} drop
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        ip saddr {SANDBOX_NET} ct state established,related accept
        ip saddr {SANDBOX_NET} drop
    }}
}}
"""


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


def _mode(policy: Any) -> str:
    return str(getattr(policy, "mode", None) or "allow-all")


def _veth_names(name: str) -> tuple[str, str]:
    # Interface names are at most 15 characters; a hash of the namespace name fits.
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"l0h{digest}", f"l0s{digest}"


def _free_slot(name: str) -> ipaddress.IPv4Network:
    """A /30 no interface on the host uses yet, starting from one derived from the name."""
    used = _ip("-4", "-o", "addr", "show").stdout
    start = int(hashlib.sha256(name.encode()).hexdigest(), 16) % _SLOTS
    for offset in range(_SLOTS):
        subnet = ipaddress.IPv4Network(
            (int(SANDBOX_NET.network_address) + 4 * ((start + offset) % _SLOTS), 30)
        )
        if f" {subnet.network_address + 1}/30 " not in used:
            return subnet
    raise RunnerError(f"no free address left in {SANDBOX_NET} for a sandbox network")


def _connect(name: str) -> None:
    """veth to the host, default route through it, NAT out (allow-all)."""
    host_if, sandbox_if = _veth_names(name)
    subnet = _free_slot(name)
    host_ip, sandbox_ip = subnet.network_address + 1, subnet.network_address + 2
    # Two `ip -batch` runs instead of seven `ip` runs: this is on every sandbox's start path.
    host_side = (f"link add {host_if} type veth peer name {sandbox_if} netns {name}\n"
                 f"addr add {host_ip}/30 dev {host_if}\n"
                 f"link set {host_if} up\n")
    sandbox_side = (f"link set {sandbox_if} name eth0\n"
                    f"addr add {sandbox_ip}/30 dev eth0\n"
                    "link set eth0 up\n"
                    f"route add default via {host_ip}\n")
    for prefix, batch in (((), host_side), (("-n", name), sandbox_side)):
        done = subprocess.run([IP, *prefix, "-batch", "-"], input=batch, env=_HOST_ENV,
                              capture_output=True, text=True, check=False, timeout=30)
        if done.returncode != 0:
            raise RunnerError(f"could not connect the sandbox network: {done.stderr.strip()}")
    _install_nat()


_nat_installed = False


def _install_nat() -> None:
    global _nat_installed
    if _nat_installed:
        return
    nft = subprocess.run([NFT, "-f", "-"], input=_NFT_RULES, env=_HOST_ENV,
                         capture_output=True, text=True, check=False, timeout=30)
    if nft.returncode != 0:
        raise RunnerError(f"could not install the sandbox NAT rules: {nft.stderr.strip()}")
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
    _nat_installed = True


def setup(sandbox_id: str, policy: Any, state_dir: Path, *, scope: str) -> NetworkHandle:
    """Create the sandbox's namespace, connected as its policy allows (module docstring)."""
    del state_dir
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
    if _mode(policy) == "allow-all":
        try:
            _connect(name)
        except BaseException:
            teardown(sandbox_id, scope=scope)
            raise
    return NetworkHandle(netns_name=name, netns_path=path)


def teardown(sandbox_id: str, *, scope: str) -> None:
    name = netns_name(sandbox_id, scope)
    path = NETNS_DIR / name
    # Deleting the namespace takes its end of the veth, and the host end with it; this
    # also covers a crash between creating the pair and moving one end in.
    host_if, _ = _veth_names(name)
    if Path(f"/sys/class/net/{host_if}").exists():
        _ip("link", "delete", host_if)
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
