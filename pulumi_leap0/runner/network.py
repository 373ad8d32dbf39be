"""Per-sandbox network namespaces, and the egress policy each one enforces.

Every sandbox runs in its own network namespace, created with ``ip netns add`` so it is
visible to operators (``ip netns list``) and cleanable by name. The runner starts the
sandbox inside ``NetworkHandle.netns_path`` (``nsenter --net=<path>`` before bubblewrap),
so bubblewrap does not unshare the network itself.

Contract between the runner and this module (stable; the policy implementation may change
everything behind it). ``policy`` is always the contract's ``spec.NetworkPolicy`` (``mode``:
allow-all | deny-all | custom, ``allow_domains``, ``allow_cidrs``, ``transforms`` with
header values) or None for the default, allow-all.

``setup(sandbox_id, policy, state_dir, *, scope, egress, bind_dir, cgroup) -> NetworkHandle``
    Called by ``Runner.start`` before any sandbox process exists. ``state_dir`` is the
    sandbox's private host-side directory (never visible inside the sandbox): the egress
    filter's pid record and log go there. ``bind_dir`` is a host directory bubblewrap can
    read as the sandbox's uid: files bound into the sandbox (the CA bundle) go there.
    ``egress`` says how filters resolve names and verify upstream TLS; ``cgroup`` is the
    ``cgroup.procs`` files the filter joins (``egress_filter.cgroup``; empty without
    cgroups). Returns the namespace to join, environment variables every sandbox process
    must get (the trust bundle's path), and host files to bind read-only into the sandbox
    as ``(host_path, sandbox_path)``. On failure raises ``RunnerError`` after undoing what
    it made.
``ensure_filter(sandbox_id, policy, state_dir, *, scope, egress, bind_dir, cgroup) -> bool``
    Called after a restart or a thaw: a custom-policy sandbox whose egress filter died gets
    a new one; says whether it had to.
``needs_filter(policy) -> bool``
    Whether the policy has an egress filter (so whether to make its cgroup). The runner
    stops a filter with ``egress_filter.stop(state_dir)`` before it kills the sandbox's
    processes; ``teardown`` does it too.
``teardown(sandbox_id, *, scope, state_dir)``
    Called by stop/destroy/recover after every sandbox process is dead. Idempotent.
``list_netns(scope) -> list[str]``
    Sandbox ids that have a namespace of this runner scope, for orphan recovery.
``netns.refill(scope)``, ``netns.drain(scope)``
    Called by ``Runner.start`` after each start and by ``Runner.close``: make namespaces
    ahead for the next starts, in the background, and remove them (``runner/netns.py``;
    ``setup`` takes one when it has one, else makes its own).

What each policy gets:

* ``deny-all``: loopback and nothing else. No route, no interface: no TCP, UDP or DNS
  leaves the sandbox, whatever the program does.
* ``allow-all`` (and no policy): a veth pair to the host with a private /30 from
  ``netns.SANDBOX_NET``, a default route through the host, and masquerade on the way out. The
  host's nftables table ``inet leap0`` keeps sandboxes from reaching each other and the
  host's own services (only replies come back in).
* ``custom``: the allow-all plumbing, plus nftables rules inside the sandbox's namespace
  (which its processes cannot change) that let only ``allow_cidrs`` through the veth and
  hand every DNS query and every other TCP connection to the sandbox's egress filter, a
  host-side process (``runner/egress``, run by ``egress_filter``) started here before any
  sandbox process exists. With transforms, the filter's CA is bound into the sandbox as its
  trust bundle.

IPv4 only, in every mode: IPv6 is disabled on both ends of every veth, so neither has an
address (not even ``fe80::``) for the other side to reach, and the host table drops any IPv6
packet that comes from or goes to a sandbox veth anyway (``netns.VETH_GROUP``). Both, because each
covers a failure of the other: a host whose firewall manager flushes nftables still gives
the veths no IPv6, and a veth that somehow gets an address (an operator's sysctl, a
template of #13 that asks for it) still meets the table. The sandbox's own loopback keeps
``::1``: it leads nowhere but the sandbox.

Forwarding: masquerade needs ``net.ipv4.ip_forward``, which is one switch for the whole
host. When it was off before leap0 turned it on, the table ``inet leap0_forward`` (made
first, kept for as long as forwarding stays on) drops every forwarded IPv4 packet that
neither comes from nor goes to a sandbox veth, so the host routes for its sandboxes and for
nobody else. When it was already on, forwarding is the operator's and left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pulumi_leap0 import spec
from pulumi_leap0.runner import egress_filter, netns, sysutil
from pulumi_leap0.runner.egress import DNS_PORT, PROXY_PORT, EgressConfig
from pulumi_leap0.runner.errors import RunnerError

log = logging.getLogger("leap0.runner")

PREFIX = "leap0-"
NFT = "nft"
#: The sandbox's trust bundle, where the CA of transform domains is: inside every sandbox
#: with transforms, and over the system bundle wherever the template has one.
TRUST_BUNDLE = "/run/leap0/ca-certificates.crt"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TRUST_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE")

#: The group host-side helpers that dial for a sandbox run with (rclone, ``mounts.py``):
#: the host table refuses their packets to whatever the egress address guard refuses
#: (``egress/resolve.py``), whatever they were redirected or resolved to. Below the
#: sandboxes' own host ids (``identity.SANDBOX_HOST_UID_BASE``), used by nothing else.
FENCED_GID = 1_999_999_999
#: Never dialled for a sandbox (besides this host's own addresses): link-local (cloud
#: metadata), multicast, "this network", reserved and broadcast, the sandbox networks.
FENCED_CIDRS = ("169.254.0.0/16", "224.0.0.0/4", "0.0.0.0/8", "240.0.0.0/4", str(netns.SANDBOX_NET))

# One table of our own, replaced whole in one transaction so rules never pile up:
# sandboxes reach the world, not each other and not the host (replies to their own
# connections come back through conntrack), and nothing of IPv6. Fenced helpers (rclone)
# reach the world only.
def _whole_table(name: str, chains: str) -> str:
    """nft input that replaces table ``name`` whole, in one transaction."""
    return f"table {name}\ndelete table {name}\ntable {name} {{\n{chains}}}\n"


# The saddr rules hold for veths made before VETH_GROUP existed (sandboxes outlive an
# upgrade); install_host_rules gives those the group too.
_NFT_RULES = _whole_table("inet leap0", f"""
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {netns.SANDBOX_NET} ip daddr != {netns.SANDBOX_NET} masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifgroup {netns.VETH_GROUP} meta nfproto ipv6 drop
        oifgroup {netns.VETH_GROUP} meta nfproto ipv6 drop
        ip saddr {netns.SANDBOX_NET} ip daddr {netns.SANDBOX_NET} drop
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifgroup {netns.VETH_GROUP} meta nfproto ipv6 drop
        iifgroup {netns.VETH_GROUP} ct state established,related accept
        iifgroup {netns.VETH_GROUP} drop
        ip saddr {netns.SANDBOX_NET} ct state established,related accept
        ip saddr {netns.SANDBOX_NET} drop
    }}
    chain output {{
        type filter hook output priority filter; policy accept;
        meta skgid {FENCED_GID} jump fenced
    }}
    chain fenced {{
        meta nfproto ipv6 reject
        fib daddr type local reject
        ip daddr {{ {", ".join(FENCED_CIDRS)} }} reject
    }}
""")

# Made only when leap0 is the one turning IPv4 forwarding on (module docstring).
_NFT_FORWARD_SCOPE = _whole_table("inet leap0_forward", f"""
    chain forward {{
        type filter hook forward priority filter; policy accept;
        meta nfproto ipv4 iifgroup != {netns.VETH_GROUP} oifgroup != {netns.VETH_GROUP} drop
    }}
""")


# The custom policy inside the sandbox's namespace. DNS first, whatever its address (even
# a loopback resolver in /etc/resolv.conf); then loopback and allow_cidrs pass; every other
# TCP connection goes to the filter; the filter chain drops what is left (UDP, ICMP, IPv6).
# It accepts what was redirected by its conntrack status: the output interface it sees is
# the one routed before the redirect (eth0), not lo.
_EGRESS_RULES = """
table inet leap0_egress {{
    set allowed {{ type ipv4_addr; flags interval; {elements} }}
    chain to_filter {{
        type nat hook output priority -100; policy accept;
        meta l4proto {{ tcp, udp }} th dport 53 redirect to :{dns_port}
        oifname "lo" accept
        ip daddr @allowed accept
        meta l4proto tcp redirect to :{proxy_port}
    }}
    chain only_allowed {{
        type filter hook output priority filter; policy drop;
        oifname "lo" accept
        ct status dnat accept
        ip daddr @allowed accept
    }}
}}
"""


@dataclass(frozen=True)
class EgressSettings:
    """How a runner's host side resolves, verifies and reaches what it dials for sandboxes:
    egress filters (custom policies) and mount endpoints."""

    #: "ip:port" of the DNS server for allowed names and mount endpoints; None uses the
    #: host's resolver.
    resolver: str | None = None
    #: A CA to trust for upstream TLS besides the system's (private PKI, tests).
    upstream_ca_file: Path | None = None
    #: CIDRs mount endpoints may reach although the address guard refuses them (an S3
    #: server on this host's loopback): the operator's explicit exception.
    allow_mount_endpoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetworkHandle:
    netns_name: str
    netns_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_ro_binds: list[tuple[Path, str]] = field(default_factory=list)


def netns_name(sandbox_id: str, scope: str) -> str:
    return f"{PREFIX}{scope}-{sandbox_id}"


def _mode(policy: spec.NetworkPolicy | None) -> str:
    return policy.mode if policy is not None else "allow-all"


_host_rules_installed = False
_host_rules_lock = threading.Lock()


def install_host_rules() -> None:
    """The host table (sandbox veths and fenced helpers), once per process; forwarding on,
    scoped to sandbox veths when leap0 is the one turning it on (module docstring)."""
    global _host_rules_installed
    with _host_rules_lock:
        if _host_rules_installed:
            return
        _nft(_NFT_RULES, "the sandbox NAT rules")
        _adopt_older_veths()
        forwarding = Path("/proc/sys/net/ipv4/ip_forward")
        if forwarding.read_text().strip() != "1":
            # The scope first: no packet of anyone else is ever forwarded in between.
            _nft(_NFT_FORWARD_SCOPE, "the forwarding scope")
            forwarding.write_text("1")
        _host_rules_installed = True


_HOST_END = re.compile(r"^l0h[0-9a-f]{10}$")  # what veth_names makes


def _adopt_older_veths() -> None:
    """Sandboxes started before an upgrade keep running: their veths get the group and
    lose IPv6 as new ones are made."""
    with contextlib.suppress(OSError):
        for name in os.listdir("/sys/class/net"):
            if _HOST_END.match(name):
                netns.run_ip("link", "set", "dev", name, "group", str(netns.VETH_GROUP))
                with contextlib.suppress(OSError):
                    netns.disable_ipv6(Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"))


def _nft(rules: str, what: str) -> None:
    done = subprocess.run([NFT, "-f", "-"], input=rules, env=sysutil.HOST_ENV,
                          capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise RunnerError(f"could not install {what}: {done.stderr.strip()}")


def setup(sandbox_id: str, policy: spec.NetworkPolicy | None, state_dir: Path, *, scope: str,
          egress: EgressSettings | None = None, bind_dir: Path | None = None,
          cgroup: Sequence[Path] = ()) -> NetworkHandle:
    """Create the sandbox's namespace, connected as its policy allows (module docstring)."""
    name = netns_name(sandbox_id, scope)
    path = netns.NETNS_DIR / name
    if path.exists():
        # Left over from a crash between setup and teardown: start from a clean namespace.
        teardown(sandbox_id, scope=scope, state_dir=state_dir)
    mode = _mode(policy)
    connected = mode in ("allow-all", "custom")
    try:
        if connected:
            install_host_rules()  # before any host end of ours is up
        if not netns.adopt(netns.pool(scope).take(connected), name, connected):
            netns.make(name, connected)
        if policy is not None and mode == "custom":
            return _filter(name, path, policy, state_dir, bind_dir or state_dir,
                           egress or EgressSettings(), cgroup)
    except BaseException:
        teardown(sandbox_id, scope=scope, state_dir=state_dir)
        raise
    return NetworkHandle(netns_name=name, netns_path=path)


def _filter(name: str, path: Path, policy: spec.NetworkPolicy, state_dir: Path, bind_dir: Path,
            egress: EgressSettings, cgroup: Sequence[Path]) -> NetworkHandle:
    """Rules in the namespace, then the egress filter: the custom policy, enforced."""
    cidrs = ", ".join(policy.allow_cidrs)
    rules = _EGRESS_RULES.format(elements=f"elements = {{ {cidrs} }};" if cidrs else "",
                                 dns_port=DNS_PORT, proxy_port=PROXY_PORT)
    done = subprocess.run(["nsenter", f"--net={path}", NFT, "-f", "-"], input=rules,
                          env=sysutil.HOST_ENV, capture_output=True, text=True, check=False,
                          timeout=30)
    if done.returncode != 0:
        raise RunnerError(f"could not install the egress rules: {done.stderr.strip()}")
    config = _filter_config(path, policy, bind_dir, egress)
    egress_filter.start(config, state_dir, cgroup)
    if config.ca_bundle_path is None:
        return NetworkHandle(netns_name=name, netns_path=path)
    bundle = Path(config.ca_bundle_path)
    return NetworkHandle(
        netns_name=name, netns_path=path,
        extra_env={key: TRUST_BUNDLE for key in TRUST_ENV},
        extra_ro_binds=[(bundle, TRUST_BUNDLE), (bundle, SYSTEM_BUNDLE)])


def _filter_config(path: Path, policy: spec.NetworkPolicy, bind_dir: Path,
                   egress: EgressSettings) -> EgressConfig:
    bundle = bind_dir / "egress-ca.crt" if policy.transforms else None
    return EgressConfig(
        netns_path=str(path), policy=policy.model_dump(mode="json"),
        resolver=egress.resolver,
        upstream_ca_file=str(egress.upstream_ca_file) if egress.upstream_ca_file else None,
        forbidden_cidrs=[str(netns.SANDBOX_NET)],
        ca_bundle_path=str(bundle) if bundle else None, system_ca_file=SYSTEM_BUNDLE)


def needs_filter(policy: spec.NetworkPolicy | None) -> bool:
    return _mode(policy) == "custom"


def ensure_filter(sandbox_id: str, policy: spec.NetworkPolicy | None, state_dir: Path, *,
                  scope: str, egress: EgressSettings | None = None,
                  bind_dir: Path | None = None, cgroup: Sequence[Path] = ()) -> bool:
    """Start a custom-policy sandbox's egress filter again if it died, and say whether it
    had to. Without its filter such a sandbox is cut off (the rules stay), not unfiltered.
    A new filter has a new CA; it rewrites the bundle in place, which the sandbox sees."""
    if policy is None or not needs_filter(policy) or egress_filter.alive(state_dir):
        return False
    path = netns.NETNS_DIR / netns_name(sandbox_id, scope)
    if not path.exists():
        raise RunnerError("the sandbox has no network namespace to filter")
    egress_filter.stop(state_dir)  # forget the dead filter's record
    egress_filter.start(_filter_config(path, policy, bind_dir or state_dir,
                                       egress or EgressSettings()), state_dir, cgroup)
    return True


def teardown(sandbox_id: str, *, scope: str, state_dir: Path | None = None) -> None:
    egress_filter.stop(state_dir)
    netns.discard(netns_name(sandbox_id, scope))


def list_netns(scope: str) -> list[str]:
    prefix = f"{PREFIX}{scope}-"
    try:
        names = os.listdir(netns.NETNS_DIR)
    except OSError:
        return []
    return sorted(n[len(prefix):] for n in names if n.startswith(prefix))
