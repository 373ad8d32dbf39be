"""The name a connection asks for, read from its first bytes (the TLS SNI or the HTTP Host).

Both parsers are written here. The SNI one is 40 lines over a fixed binary layout (RFC 8446
4.1.2, RFC 6066 3), and the libraries that parse TLS records either pull in a whole
packet-capture stack (scapy, dpkt) or are unmaintained. The Host one is 20 lines because
h11 cost a fifth of the filter's CPU per connection (bench/bench_egress.py) for one header.
Neither needs to agree with the upstream server's parser: the filter dials the name it
read, so a request read differently upstream still reaches only that host.
"""

from __future__ import annotations

import re
import struct
from typing import Literal

#: No ClientHello or request head we accept is larger; a bigger one is refused.
MAX_HEAD = 16 * 1024

Kind = Literal["tls", "http", "other"]

_REQUEST_LINE = re.compile(rb"[A-Z]+ [\x21-\x7e]+ HTTP/1\.[01]\Z")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# A registered name with an optional port; IP literals and anything else are not names.
_HOST = re.compile(rb"[A-Za-z0-9.-]+(:[0-9]{1,5})?\Z")


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
    """The host (without port) an HTTP/1.x request head names in its one Host header."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return None
    request_line, *lines = head[:end].split(b"\r\n")
    if not _REQUEST_LINE.match(request_line):
        return None
    hosts = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            return None  # folded or malformed header: not a request we read a name from
        if name.lower() == b"host":
            hosts.append(value.strip())
    if len(hosts) != 1 or not _HOST.match(hosts[0]):
        return None
    return hosts[0].decode("ascii").rsplit(":", 1)[0]
