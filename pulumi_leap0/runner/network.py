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
``refill(scope)``
    Called by ``Runner.start`` after each start: make namespaces ahead for the next ones, in
    the background (``_Pool``; ``setup`` takes one when it has one, else makes its own).
``drain(scope)``
    Called by ``Runner.close``: remove the namespaces made ahead (also done at exit).

What each policy gets:

* ``deny-all``: loopback and nothing else. No route, no interface: no TCP, UDP or DNS
  leaves the sandbox, whatever the program does.
* ``allow-all`` (and no policy): a veth pair to the host with a private /30 from
  ``SANDBOX_NET``, a default route through the host, and masquerade on the way out. The
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
packet that comes from or goes to a sandbox veth anyway (``VETH_GROUP``). Both, because each
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

import atexit
import contextlib
import ctypes
import fcntl
import hashlib
import ipaddress
import logging
import os
import re
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pulumi_leap0 import spec
from pulumi_leap0.runner import egress_filter, sysutil
from pulumi_leap0.runner.egress import DNS_PORT, PROXY_PORT, EgressConfig
from pulumi_leap0.runner.errors import RunnerError

log = logging.getLogger("leap0.runner")

NETNS_DIR = Path("/run/netns")
PREFIX = "leap0-"
#: Names of namespaces made ahead (``_Pool``), ``leap0p-<scope>-<pid>-<n>``: never a sandbox's.
PREPARED_PREFIX = "leap0p-"
#: How many a runner scope keeps made ahead, connected (a veth) and loopback only.
PREPARED = {True: 2, False: 1}
IP = "ip"
NFT = "nft"
#: The sandbox's trust bundle, where the CA of transform domains is: inside every sandbox
#: with transforms, and over the system bundle wherever the template has one.
TRUST_BUNDLE = "/run/leap0/ca-certificates.crt"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
TRUST_ENV = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE")

#: Where sandboxes' veth addresses come from: one /30 each (host .1, sandbox .2).
SANDBOX_NET = ipaddress.IPv4Network("10.201.0.0/16")
_SLOTS = SANDBOX_NET.num_addresses // 4
#: The interface group of every sandbox veth's host end: how the host table knows them.
VETH_GROUP = 7840
#: The group host-side helpers that dial for a sandbox run with (rclone, ``mounts.py``):
#: the host table refuses their packets to whatever the egress address guard refuses
#: (``egress/resolve.py``), whatever they were redirected or resolved to. Below the
#: sandboxes' own host ids (``identity.SANDBOX_HOST_UID_BASE``), used by nothing else.
FENCED_GID = 1_999_999_999
#: Never dialled for a sandbox (besides this host's own addresses): link-local (cloud
#: metadata), multicast, "this network", reserved and broadcast, the sandbox networks.
FENCED_CIDRS = ("169.254.0.0/16", "224.0.0.0/4", "0.0.0.0/8", "240.0.0.0/4", str(SANDBOX_NET))

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
        ip saddr {SANDBOX_NET} ip daddr != {SANDBOX_NET} masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifgroup {VETH_GROUP} meta nfproto ipv6 drop
        oifgroup {VETH_GROUP} meta nfproto ipv6 drop
        ip saddr {SANDBOX_NET} ip daddr {SANDBOX_NET} drop
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifgroup {VETH_GROUP} meta nfproto ipv6 drop
        iifgroup {VETH_GROUP} ct state established,related accept
        iifgroup {VETH_GROUP} drop
        ip saddr {SANDBOX_NET} ct state established,related accept
        ip saddr {SANDBOX_NET} drop
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
        meta nfproto ipv4 iifgroup != {VETH_GROUP} oifgroup != {VETH_GROUP} drop
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


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IP, *args], env=sysutil.HOST_ENV, capture_output=True, text=True, check=False, timeout=30
    )


def _mode(policy: spec.NetworkPolicy | None) -> str:
    return policy.mode if policy is not None else "allow-all"


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


def _connect(name: str, *, host_up: bool = True) -> None:
    """veth to the host, default route through it, NAT out (allow-all); IPv4 only. A
    namespace made ahead keeps its host end down until a sandbox takes it (``_adopt``)."""
    host_if, sandbox_if = _veth_names(name)
    subnet = _free_slot(name)
    host_ip, sandbox_ip = subnet.network_address + 1, subnet.network_address + 2
    # Interfaces made in the namespace from now on (its eth0) get no IPv6; its loopback,
    # made with it, keeps ::1.
    _in_netns(NETNS_DIR / name, lambda: _disable_ipv6(Path(_DEFAULT_IPV6_SWITCH)))
    # Two `ip -batch` runs instead of seven `ip` runs.
    host_side = (f"link add {host_if} group {VETH_GROUP} type veth peer name {sandbox_if} "
                 f"netns {name}\n"
                 f"addr add {host_ip}/30 dev {host_if}\n"
                 + (f"link set {host_if} up\n" if host_up else ""))
    sandbox_side = (f"link set {sandbox_if} name eth0\n"
                    f"addr add {sandbox_ip}/30 dev eth0\n"
                    "link set eth0 up\n"
                    f"route add default via {host_ip}\n")
    for prefix, batch in (((), host_side), (("-n", name), sandbox_side)):
        done = subprocess.run([IP, *prefix, "-batch", "-"], input=batch, env=sysutil.HOST_ENV,
                              capture_output=True, text=True, check=False, timeout=30)
        if done.returncode != 0:
            raise RunnerError(f"could not connect the sandbox network: {done.stderr.strip()}")
        if not prefix:
            # Before the host end is up: a veth has no carrier, so no address, until then.
            _disable_ipv6(Path(f"/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6"))
    install_host_rules()


def _make(name: str, connected: bool, *, host_up: bool = True) -> None:
    """A new namespace ``name``, its loopback up and, ``connected``, its veth."""
    made = _ip("netns", "add", name)
    if made.returncode != 0:
        raise RunnerError(f"could not create network namespace: {made.stderr.strip()}")
    up = _ip("-n", name, "link", "set", "lo", "up")
    if up.returncode != 0:
        raise RunnerError(f"could not bring up loopback: {up.stderr.strip()}")
    if connected:
        _connect(name, host_up=host_up)


# --- Namespaces made ahead ------------------------------------------------------------------
#
# Making a namespace and its veth takes five `ip` runs, most of a start's network cost. So
# each runner scope keeps a few made ahead (``PREPARED``), by a thread of its own between
# starts: exactly what ``_make`` gives a sandbox, under a name no sandbox has, its host end
# down. ``setup`` takes one out of the pool for good (nothing is ever put back), names it the
# sandbox's (a bind mount of the namespace file, the old name unmounted), names its host end
# the sandbox's and brings it up; from then on it is that sandbox's alone and goes with it
# (``teardown``). A namespace is made for one sandbox and never serves another. The pool is
# the runner's, not an organization's: nothing of it is in the store or counts against a
# quota. What is left at exit is removed (``atexit``); what a killed process left, by the
# next pool of its scope (the process id in the name is dead).

_SIOCSIFNAME, _SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8923, 0x8913, 0x8914, 0x1


def _rename_up(old: str, new: str) -> None:
    """Rename a (down) host interface and bring it up: two ioctls, no process."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, _SIOCSIFNAME, struct.pack("16s16s8x", old.encode(), new.encode()))
        got = fcntl.ioctl(sock, _SIOCGIFFLAGS, struct.pack("16sH22x", new.encode(), 0))
        flags = struct.unpack("16sH22x", got)[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", new.encode(), flags | _IFF_UP))


def _move_netns(src: Path, dst: Path) -> None:
    """The namespace at ``src`` at ``dst`` instead (as ``ip netns attach`` names one)."""
    os.close(os.open(dst, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
    try:
        sysutil.mount(str(src), dst, None, sysutil.MS_BIND)
    except OSError:
        os.unlink(dst)
        raise
    sysutil.umount(src)
    os.unlink(src)


def _discard(name: str) -> None:
    host_if, _ = _veth_names(name)
    if Path(f"/sys/class/net/{host_if}").exists():
        _ip("link", "delete", host_if)
    if (NETNS_DIR / name).exists():
        _ip("netns", "delete", name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class _Pool:
    def __init__(self, scope: str) -> None:
        self.scope = scope
        self._cond = threading.Condition()
        self._ready: dict[bool, list[str]] = {True: [], False: []}
        self._made = 0
        self._thread: threading.Thread | None = None
        self._stopped = False

    def take(self, connected: bool) -> str | None:
        with self._cond:
            ready = self._ready[connected]
            return ready.pop(0) if ready else None

    def ready(self) -> list[str]:
        with self._cond:
            return [*self._ready[True], *self._ready[False]]

    def refill(self) -> None:
        with self._cond:
            if self._stopped:
                return
            if self._thread is None:
                self._sweep()
                self._thread = threading.Thread(target=self._fill, name="leap0-netns-pool",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def drain(self) -> None:
        with self._cond:
            self._stopped = True
            names = self._ready[True] + self._ready[False]
            self._ready = {True: [], False: []}
            self._cond.notify()
            thread = self._thread
        for name in names:
            with contextlib.suppress(Exception):
                _discard(name)
        if thread is not None and thread.native_id is not None:
            with contextlib.suppress(OSError):  # its current one made at full speed
                os.setpriority(os.PRIO_PROCESS, thread.native_id, 0)
            thread.join(timeout=10)  # it removes the one it was making

    @staticmethod
    def _sweep() -> None:
        """Namespaces a process that is dead now made ahead and never gave away, whatever
        its scope (a killed backend's scope may never run again)."""
        with contextlib.suppress(OSError):
            for name in os.listdir(NETNS_DIR):
                parts = name[len(PREPARED_PREFIX):].split("-")
                if (name.startswith(PREPARED_PREFIX) and len(parts) == 3
                        and parts[1].isdigit() and not _alive(int(parts[1]))):
                    with contextlib.suppress(Exception):
                        _discard(name)

    def _fill(self) -> None:
        # Niceness is per thread on Linux and the `ip` runs inherit it: making namespaces
        # ahead yields the CPU to the sandboxes just started and to the calls they get.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while True:
            with self._cond:
                while not self._stopped and all(
                        len(self._ready[kind]) >= n for kind, n in PREPARED.items()):
                    self._cond.wait()
                if self._stopped:
                    return
                connected = len(self._ready[True]) < PREPARED[True]
                self._made += 1
                name = f"{PREPARED_PREFIX}{self.scope}-{os.getpid()}-{self._made}"
            try:
                _make(name, connected, host_up=False)
            except Exception as exc:  # starts make their own again; say why, once
                log.warning("no network namespaces made ahead: %s", exc)
                with self._cond:
                    self._stopped = True
            with self._cond:
                if not self._stopped:
                    self._ready[connected].append(name)
                    continue
            with contextlib.suppress(Exception):
                _discard(name)
            return


_pools: dict[str, _Pool] = {}
_pools_lock = threading.Lock()


def _pool(scope: str) -> _Pool:
    with _pools_lock:
        return _pools.setdefault(scope, _Pool(scope))


def refill(scope: str) -> None:
    """Make namespaces ahead for ``scope``'s next starts, in the background."""
    _pool(scope).refill()


def prepared(scope: str) -> list[str]:
    """The namespaces ``scope`` has made ahead and not given away yet, by name."""
    return _pool(scope).ready()


def drain(scope: str) -> None:
    """Remove what ``scope`` made ahead (a runner closing); a later ``refill`` starts over."""
    with _pools_lock:
        pool = _pools.pop(scope, None)
    if pool is not None:
        pool.drain()


@atexit.register
def _drain_pools() -> None:
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.drain()


def _adopt(taken: str | None, name: str, connected: bool) -> bool:
    """Make ``taken``, a namespace made ahead, the sandbox's ``name``; False without one."""
    if taken is None:
        return False
    try:
        _move_netns(NETNS_DIR / taken, NETNS_DIR / name)
    except OSError as exc:
        log.warning("a network namespace made ahead could not be used: %s", exc)
        with contextlib.suppress(Exception):
            _discard(taken)
        return False
    if connected:
        try:
            _rename_up(_veth_names(taken)[0], _veth_names(name)[0])
        except OSError as exc:
            raise RunnerError(f"could not connect the sandbox network: {exc}") from exc
    return True


def _disable_ipv6(switch: Path) -> None:
    if Path("/proc/sys/net/ipv6").is_dir():  # else the kernel has no IPv6 at all
        switch.write_text("1")


_libc = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


_DEFAULT_IPV6_SWITCH = "/proc/sys/net/ipv6/conf/default/disable_ipv6"


def _in_netns(netns: Path, work: Callable[[], None]) -> None:
    """Run ``work`` (a /proc/sys/net write) in another network namespace. /proc/sys/net shows
    the namespace of the thread that opens it, so a thread of its own joins the namespace
    (setns affects that thread only, and it ends right after): no process to start."""
    failed: list[OSError] = []

    def run() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            finally:
                os.close(fd)
            work()
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="leap0-netns")
    thread.start()
    thread.join()
    if failed:
        raise RunnerError(f"could not configure the sandbox network: {failed[0]}")


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


_HOST_END = re.compile(r"^l0h[0-9a-f]{10}$")  # what _veth_names makes


def _adopt_older_veths() -> None:
    """Sandboxes started before an upgrade keep running: their veths get the group and
    lose IPv6 as new ones are made."""
    with contextlib.suppress(OSError):
        for name in os.listdir("/sys/class/net"):
            if _HOST_END.match(name):
                _ip("link", "set", "dev", name, "group", str(VETH_GROUP))
                with contextlib.suppress(OSError):
                    _disable_ipv6(Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"))


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
    path = NETNS_DIR / name
    if path.exists():
        # Left over from a crash between setup and teardown: start from a clean namespace.
        teardown(sandbox_id, scope=scope, state_dir=state_dir)
    mode = _mode(policy)
    connected = mode in ("allow-all", "custom")
    try:
        if not _adopt(_pool(scope).take(connected), name, connected):
            _make(name, connected)
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
        forbidden_cidrs=[str(SANDBOX_NET)],
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
    path = NETNS_DIR / netns_name(sandbox_id, scope)
    if not path.exists():
        raise RunnerError("the sandbox has no network namespace to filter")
    egress_filter.stop(state_dir)  # forget the dead filter's record
    egress_filter.start(_filter_config(path, policy, bind_dir or state_dir,
                                       egress or EgressSettings()), state_dir, cgroup)
    return True


def teardown(sandbox_id: str, *, scope: str, state_dir: Path | None = None) -> None:
    egress_filter.stop(state_dir)
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
