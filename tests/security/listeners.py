"""A TCP server on the host for attack tests: it records every peer it accepts, so any
entry is the attack reaching it, and answers with ``reply``."""

from __future__ import annotations

import contextlib
import socket
import threading


class Listener:
    """On every address of the host by default (``[::]``, IPv4 too)."""

    def __init__(self, reply: bytes, address: str = "::", port: int = 0,
                 read_first: bool = False) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.create_server((address, port), family=family,
                                         dualstack_ipv6=family == socket.AF_INET6)
        self.port: int = self.sock.getsockname()[1]
        self.peers: list[str] = []
        self._reply, self._read_first = reply, read_first
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(str(peer[0]))
            with contextlib.suppress(OSError):
                conn.settimeout(2)
                if self._read_first:  # an HTTP client waits for its request to be read
                    conn.recv(4096)
                conn.sendall(self._reply)
            conn.close()

    def close(self) -> None:
        self.sock.close()
