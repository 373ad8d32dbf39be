"""Ingress: a TCP connection from the host to a port on a sandbox's own loopback.

Preview URLs reach a server in the sandbox whatever its network policy (``deny-all`` has no
interface but loopback), so the connection is not routed at all: the socket is *created* in
the sandbox's network namespace, and a socket stays in the namespace it was created in. Its
only destination is ``127.0.0.1`` there, so it can reach nothing but the sandbox itself, and
the sandbox's own egress rules are untouched (it still cannot dial out).

Joining a namespace changes the calling thread, so sockets are made by one thread of our
own that does nothing else: the runner's other threads never leave the host's namespace.
"""

from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor

from pulumi_leap0.runner import sysutil
from pulumi_leap0.runner.errors import SandboxNotRunningError
from pulumi_leap0.runner.state import Records, SandboxState

LOOPBACK = "127.0.0.1"
_maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leap0-ingress")


def _socket_in(box: SandboxState) -> socket.socket:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        theirs = os.open(f"/proc/{box.init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(own)
        raise SandboxNotRunningError("the sandbox is not running") from None
    try:
        # The fd is of the process we opened it from: if the init's pid was reused since,
        # the start time differs and the namespace is not the sandbox's.
        if sysutil.process_start_time(box.init_pid) != box.init_start:
            raise SandboxNotRunningError("the sandbox is not running")
        sysutil.setns(theirs, sysutil.CLONE_NEWNET)
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        finally:
            sysutil.setns(own, sysutil.CLONE_NEWNET)
    finally:
        os.close(theirs)
        os.close(own)


def connect(box: SandboxState, port: int, timeout: float) -> socket.socket:
    """A connected, blocking socket to ``127.0.0.1:port`` in the sandbox; ``OSError``
    (``ConnectionRefusedError``: nothing listens there) when it cannot be had."""
    sock = _maker.submit(_socket_in, box).result()
    try:
        sock.settimeout(timeout)
        sock.connect((LOOPBACK, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


class Ingress:
    """Connections into this runner's running sandboxes (``Runner.ingress``)."""

    def __init__(self, records: Records) -> None:
        self._records = records

    def connect(self, sandbox_id: str, port: int, *, timeout: float) -> socket.socket:
        """A connection to ``port`` on the sandbox's loopback, whatever its network policy."""
        return connect(self._records.running(sandbox_id), port, timeout)
