"""Start-up of the egress filter: ``python -m pulumi_leap0.runner.egress`` (config on stdin).

Order matters: import everything, read the config, make the CA and write the sandbox's
trust bundle, bind the two sockets inside the sandbox's network namespace, come back to the
host's, drop to ``nobody``, say ``ready`` on stdout, serve until killed. The runner starts
the sandbox only after ``ready``, so no program of the sandbox ever runs unfiltered.

``--fork-server``: the runner's one long-lived process with the imports done
(``egress_filter._fork``). For each sandbox it receives two pipe ends over its socket pair
(stdin, stdout) and forks a filter that carries on from "read the config" as above, so a
custom sandbox costs a fork (milliseconds), not an interpreter start and its imports
(~0.4 CPU-s) on this create's path or, as a spare refilled behind it, on the next one's.
It never sees a sandbox's config: each child reads its own from its own pipe, after it has
closed the socket to the server and before it has read anything a sandbox sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import socket
import ssl
import struct
import sys
import traceback
from pathlib import Path

from pulumi_leap0 import spec
from pulumi_leap0.runner.egress import DNS_PORT, PROXY_PORT, READY, EgressConfig
from pulumi_leap0.runner.egress.authority import CertificateAuthority
from pulumi_leap0.runner.egress.nameserver import DnsResponder
from pulumi_leap0.runner.egress.proxy import Proxy
from pulumi_leap0.runner.egress.resolve import AddressGuard, Resolver

_CLONE_NEWNET = 0x40000000
_NOBODY = 65534
#: The log is on the host's disk and a sandbox decides how much it says: cap it.
LOG_BUDGET_BYTES = 4 * 1024 * 1024


class _Budget(logging.Filter):
    def __init__(self, budget: int) -> None:
        super().__init__()
        self.left = budget

    def filter(self, record: logging.LogRecord) -> bool:
        if self.left <= 0:
            return False
        self.left -= len(record.getMessage()) + 40
        if self.left <= 0:
            record.msg, record.args = "log budget spent: nothing more is logged", ()
        return True


def _setns(fd: int) -> None:
    # os.setns arrived in Python 3.12; we support 3.11.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


def bind_in(netns_path: str) -> tuple[socket.socket, socket.socket]:
    """The proxy's TCP listener and the resolver's UDP socket, on the sandbox's loopback."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns_path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", PROXY_PORT))
            listener.listen(1024)
            resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            resolver.bind(("127.0.0.1", DNS_PORT))
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
    return listener, resolver


def _preload() -> None:
    """Import now what would be imported on first use: as ``nobody`` the interpreter's
    modules may be unreadable (a root-owned virtualenv), and a failed lazy import in the
    middle of a connection would refuse it for no reason the policy gives."""
    import encodings.idna  # noqa: F401 - ssl encodes server names with it

    import dns.asyncbackend
    import dns.rdata

    dns.rdata.load_all_types(disable_dynamic_load=True)  # type: ignore[no-untyped-call]
    dns.asyncbackend.get_backend("asyncio")
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401


def _drop_privileges() -> None:
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(_NOBODY, _NOBODY, _NOBODY)
        os.setresuid(_NOBODY, _NOBODY, _NOBODY)


def _upstream_context() -> ssl.SSLContext:
    context = ssl.create_default_context()  # the system's trust store: tens of ms to load
    context.set_alpn_protocols(["http/1.1"])
    return context


def _write_bundle(config: EgressConfig, authority: CertificateAuthority) -> None:
    assert config.ca_bundle_path is not None
    system = b""
    if config.system_ca_file and Path(config.system_ca_file).is_file():
        system = Path(config.system_ca_file).read_bytes().rstrip(b"\n") + b"\n"
    path = Path(config.ca_bundle_path)
    path.write_bytes(system + authority.pem())
    path.chmod(0o644)


async def _serve(config: EgressConfig, policy: spec.NetworkPolicy,
                 authority: CertificateAuthority | None, upstream_tls: ssl.SSLContext,
                 listener: socket.socket, dns_socket: socket.socket) -> None:
    resolver = Resolver(config.resolver, AddressGuard(config.forbidden_cidrs))
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: DnsResponder(policy, resolver),
                                        sock=dns_socket)
    await Proxy(policy, resolver, authority, upstream_tls).serve(listener)


def _prepare() -> ssl.SSLContext:
    """Everything a filter does before it has a sandbox (done once, in the fork server)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_Budget(LOG_BUDGET_BYTES))
    _preload()
    spec.NetworkPolicy.model_validate({"mode": "deny-all"})  # builds its validator now
    return _upstream_context()


def _filter(upstream_tls: ssl.SSLContext) -> int:
    """One sandbox's filter, from its config on stdin to serving."""
    config = EgressConfig.from_json(sys.stdin.read())
    if config.log_path:
        log_fd = os.open(config.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log_fd, sys.stderr.fileno())
        os.close(log_fd)
    policy = spec.NetworkPolicy.model_validate(config.policy)
    authority = None
    if policy.transforms:
        authority = CertificateAuthority(t.domain for t in policy.transforms)
        _write_bundle(config, authority)
    if config.upstream_ca_file:
        upstream_tls.load_verify_locations(config.upstream_ca_file)
    listener, dns_socket = bind_in(config.netns_path)
    _drop_privileges()
    print(READY, flush=True)
    serving = _serve(config, policy, authority, upstream_tls, listener, dns_socket)
    if "uvloop" in sys.modules:
        sys.modules["uvloop"].run(serving)
    else:
        asyncio.run(serving)
    return 0


def _reap(_signum: int, _frame: object) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def _fork_server(upstream_tls: ssl.SSLContext) -> int:
    """Fork a filter per request until the runner closes its end of the socket pair."""
    control = socket.socket(fileno=0)  # SOCK_SEQPACKET: one request, two fds, per message
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the backend's ^C: its end closes anyway
    signal.signal(signal.SIGCHLD, _reap)  # filters die as zombies of ours otherwise
    gc.freeze()  # the collector would otherwise touch (and copy) every inherited page
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 16, 2)
        except OSError:
            return 1
        if not message:
            return 0
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        pid = os.fork()
        if pid == 0:
            _child(control, fds[0], fds[1], upstream_tls)
        for fd in fds:
            os.close(fd)
        control.send(struct.pack("!i", pid))


def _child(control: socket.socket, config_fd: int, ready_fd: int,
           upstream_tls: ssl.SSLContext) -> None:
    code = 1
    try:
        # Nothing of the server's stays reachable: its socket (fd 0) goes under the pipe.
        control.detach()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.setsid()  # outlives the backend, like the sandbox
        os.dup2(config_fd, 0)
        os.dup2(ready_fd, 1)
        os.close(config_fd)
        os.close(ready_fd)
        code = _filter(upstream_tls)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stderr.flush()
        os._exit(code)  # never back into the server's loop


def main() -> int:
    upstream_tls = _prepare()
    if sys.argv[1:] == ["--fork-server"]:
        return _fork_server(upstream_tls)
    return _filter(upstream_tls)


if __name__ == "__main__":
    sys.exit(main())
