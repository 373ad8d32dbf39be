"""A sandbox's network namespace as a kernel object: made (loopback up and, connected, a veth
pair to the host with an address, a route and no IPv6), made ahead in a pool, handed to one
sandbox for good, discarded. What a namespace may reach, its policy, is ``network.py``'s;
this module knows nothing of policies, and ``network.setup`` installs the host table before
it brings up any host end this module made.
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
import socket
import struct
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from pulumi_leap0.runner import sysutil
from pulumi_leap0.runner.errors import RunnerError

log = logging.getLogger("leap0.runner")

NETNS_DIR = Path("/run/netns")
#: Names of namespaces made ahead (``_Pool``), ``leap0p-<scope>-<pid>-<n>``: never a sandbox's.
PREPARED_PREFIX = "leap0p-"
#: How many a runner scope keeps made ahead, connected (a veth) and loopback only.
PREPARED = {True: 2, False: 1}
IP = "ip"
#: Where sandboxes' veth addresses come from: one /30 each (host .1, sandbox .2).
SANDBOX_NET = ipaddress.IPv4Network("10.201.0.0/16")
_SLOTS = SANDBOX_NET.num_addresses // 4
#: The interface group of every sandbox veth's host end: how the host table knows them.
VETH_GROUP = 7840


def run_ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IP, *args], env=sysutil.HOST_ENV, capture_output=True, text=True, check=False, timeout=30
    )


def veth_names(name: str) -> tuple[str, str]:
    # Interface names are at most 15 characters; a hash of the namespace name fits.
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"l0h{digest}", f"l0s{digest}"


def _free_slot(name: str) -> ipaddress.IPv4Network:
    """A /30 no interface on the host uses yet, starting from one derived from the name."""
    used = run_ip("-4", "-o", "addr", "show").stdout
    start = int(hashlib.sha256(name.encode()).hexdigest(), 16) % _SLOTS
    for offset in range(_SLOTS):
        subnet = ipaddress.IPv4Network(
            (int(SANDBOX_NET.network_address) + 4 * ((start + offset) % _SLOTS), 30)
        )
        if f" {subnet.network_address + 1}/30 " not in used:
            return subnet
    raise RunnerError(f"no free address left in {SANDBOX_NET} for a sandbox network")


def connect(name: str, *, host_up: bool = True) -> None:
    """veth to the host, default route through it, NAT out (allow-all); IPv4 only. A
    namespace made ahead keeps its host end down until a sandbox takes it (``adopt``)."""
    host_if, sandbox_if = veth_names(name)
    subnet = _free_slot(name)
    host_ip, sandbox_ip = subnet.network_address + 1, subnet.network_address + 2
    # Interfaces made in the namespace from now on (its eth0) get no IPv6; its loopback,
    # made with it, keeps ::1.
    _in_netns(NETNS_DIR / name, lambda: disable_ipv6(Path(_DEFAULT_IPV6_SWITCH)))
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
            disable_ipv6(Path(f"/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6"))


def make(name: str, connected: bool, *, host_up: bool = True) -> None:
    """A new namespace ``name``, its loopback up and, ``connected``, its veth."""
    made = run_ip("netns", "add", name)
    if made.returncode != 0:
        raise RunnerError(f"could not create network namespace: {made.stderr.strip()}")
    up = run_ip("-n", name, "link", "set", "lo", "up")
    if up.returncode != 0:
        raise RunnerError(f"could not bring up loopback: {up.stderr.strip()}")
    if connected:
        connect(name, host_up=host_up)


# --- Namespaces made ahead ------------------------------------------------------------------
#
# Making a namespace and its veth takes five `ip` runs, most of a start's network cost. So
# each runner scope keeps a few made ahead (``PREPARED``), by a thread of its own between
# starts: exactly what ``make`` gives a sandbox, under a name no sandbox has, its host end
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


def discard(name: str) -> None:
    """Remove namespace ``name`` and its veth; idempotent."""
    # Deleting the namespace takes its end of the veth, and the host end with it; this
    # also covers a crash between creating the pair and moving one end in.
    host_if, _ = veth_names(name)
    if Path(f"/sys/class/net/{host_if}").exists():
        run_ip("link", "delete", host_if)
    path = NETNS_DIR / name
    if not path.exists():
        return
    done = run_ip("netns", "delete", name)
    if done.returncode != 0 and path.exists():
        # ip refuses when the mount is already gone but the file stays behind.
        sysutil.umount(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


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
                discard(name)
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
                        discard(name)

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
                make(name, connected, host_up=False)
            except Exception as exc:  # starts make their own again; say why, once
                log.warning("no network namespaces made ahead: %s", exc)
                with self._cond:
                    self._stopped = True
            with self._cond:
                if not self._stopped:
                    self._ready[connected].append(name)
                    continue
            with contextlib.suppress(Exception):
                discard(name)
            return


_pools: dict[str, _Pool] = {}
_pools_lock = threading.Lock()


def pool(scope: str) -> _Pool:
    with _pools_lock:
        return _pools.setdefault(scope, _Pool(scope))


def refill(scope: str) -> None:
    """Make namespaces ahead for ``scope``'s next starts, in the background."""
    pool(scope).refill()


def prepared(scope: str) -> list[str]:
    """The namespaces ``scope`` has made ahead and not given away yet, by name."""
    return pool(scope).ready()


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


def adopt(taken: str | None, name: str, connected: bool) -> bool:
    """Make ``taken``, a namespace made ahead, the sandbox's ``name``; False without one."""
    if taken is None:
        return False
    try:
        _move_netns(NETNS_DIR / taken, NETNS_DIR / name)
    except OSError as exc:
        log.warning("a network namespace made ahead could not be used: %s", exc)
        with contextlib.suppress(Exception):
            discard(taken)
        return False
    if connected:
        try:
            _rename_up(veth_names(taken)[0], veth_names(name)[0])
        except OSError as exc:
            raise RunnerError(f"could not connect the sandbox network: {exc}") from exc
    return True


def disable_ipv6(switch: Path) -> None:
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
