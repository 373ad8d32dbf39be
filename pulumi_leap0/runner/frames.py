"""The wire format between the runner and a sandbox's file helper: typed, length-prefixed
frames over one stream socket per call.

A frame is one kind byte, a 4-byte big-endian length and that many bytes. A call is a
``REQUEST`` (JSON) from the runner, answered by a ``RESULT`` (JSON: ``{"ok": value}`` or
``{"error": {...}}``). A read's first result says the file is open; ``DATA`` frames and an
``END`` follow, or a ``RESULT`` with the error that cut it short. A write's first result
says the file is open; the runner then sends ``DATA`` frames and an ``END`` and gets the
final ``RESULT``. Lengths are checked on receipt: neither side trusts the other's framing.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

REQUEST, RESULT, DATA, END = b"Q", b"R", b"D", b"E"
KINDS = frozenset({REQUEST, RESULT, DATA, END})
#: A listing of the most entries an ``ls`` may return fits; a data frame is far smaller.
MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct("!cI")
# Below this a frame goes out in one send: one syscall, and the copy is cheaper than it.
_COALESCE = 64 * 1024


class ConnectionEnded(EOFError):
    """The other side closed the call (between frames or inside one)."""


def encode(kind: bytes, payload: bytes | memoryview = b"") -> bytes:
    return _HEADER.pack(kind, len(payload)) + bytes(payload)


def encode_json(kind: bytes, value: Any) -> bytes:
    return encode(kind, json.dumps(value, separators=(",", ":")).encode())


def send(sock: socket.socket, kind: bytes, payload: bytes | memoryview = b"") -> None:
    if len(payload) < _COALESCE:
        sock.sendall(encode(kind, payload))
    else:
        sock.sendall(_HEADER.pack(kind, len(payload)))
        sock.sendall(payload)


def send_json(sock: socket.socket, kind: bytes, value: Any) -> None:
    sock.sendall(encode_json(kind, value))


def recv(sock: socket.socket) -> tuple[bytes, bytes]:
    kind, length = _HEADER.unpack(_exactly(sock, _HEADER.size))
    if kind not in KINDS or length > MAX_FRAME:
        raise ValueError("a malformed frame")
    return kind, _exactly(sock, length)


def _exactly(sock: socket.socket, size: int) -> bytes:
    if size == 0:
        return b""
    first = sock.recv(size, socket.MSG_WAITALL)  # all of it in one call, nearly always
    if len(first) == size:
        return first
    if not first:
        raise ConnectionEnded("the call ended")
    buffer = bytearray(size)
    buffer[: len(first)] = first
    view = memoryview(buffer)[len(first):]
    while view:
        got = sock.recv_into(view)
        if got == 0:
            raise ConnectionEnded("the call ended")
        view = view[got:]
    return bytes(buffer)
