"""The name a connection asks for, read from its first bytes (the TLS SNI or the HTTP Host).

The SNI parser is written here: it is 40 lines over a fixed binary layout (RFC 8446 4.1.2,
RFC 6066 3), and the libraries that parse TLS records either pull in a whole packet-capture
stack (scapy, dpkt) or are unmaintained. HTTP goes through h11.
"""

from __future__ import annotations

import struct
from typing import Literal

import h11

#: No ClientHello or request head we accept is larger; a bigger one is refused.
MAX_HEAD = 16 * 1024

Kind = Literal["tls", "http", "other"]


def kind_of(head: bytes) -> Kind:
    if head[:1] == b"\x16":
        return "tls"
    if head[:1].isalpha():
        return "http"
    return "other"


def is_complete(head: bytes) -> bool:
    """Whether ``head`` holds the whole ClientHello record or request head already."""
    kind = kind_of(head)
    if kind == "tls":
        return len(head) >= 5 and len(head) >= 5 + struct.unpack("!H", head[3:5])[0]
    if kind == "http":
        return b"\r\n\r\n" in head
    return True


def server_name(head: bytes) -> str | None:
    """The SNI host name of a TLS ClientHello, or None when there is none or it is malformed."""
    try:
        return _sni(memoryview(head))
    except (IndexError, struct.error, UnicodeDecodeError):
        return None


def _sni(data: memoryview) -> str | None:
    # record header (5) | handshake type (1) + length (3) | version (2) | random (32)
    if data[0] != 0x16 or data[5] != 0x01:
        return None
    pos = 5 + 4 + 2 + 32
    pos += 1 + data[pos]  # session id
    pos += 2 + struct.unpack_from("!H", data, pos)[0]  # cipher suites
    pos += 1 + data[pos]  # compression methods
    end = pos + 2 + struct.unpack_from("!H", data, pos)[0]
    pos += 2
    while pos + 4 <= end:
        ext_type, ext_len = struct.unpack_from("!HH", data, pos)
        pos += 4
        if ext_type == 0:  # server_name: list length (2), then (type (1), length (2), name)
            name_type, name_len = struct.unpack_from("!BH", data, pos + 2)
            if name_type != 0:
                return None
            return bytes(data[pos + 5 : pos + 5 + name_len]).decode("ascii")
        pos += ext_len
    return None


def http_host(head: bytes) -> str | None:
    """The host (without port) an HTTP/1.x request head names in its Host header."""
    conn = h11.Connection(h11.SERVER)
    try:
        conn.receive_data(head)
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    hosts = [value for name, value in event.headers if name == b"host"]
    if len(hosts) != 1:
        return None
    host = hosts[0].decode("ascii", "replace")
    if host.startswith("["):  # an IPv6 literal is never a domain
        return None
    return host.rsplit(":", 1)[0] if ":" in host else host
