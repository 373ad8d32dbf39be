"""A read's window of a file: ``read_window``, run by the file helper (``fileserver.py``)
on a file ``files.open_regular`` opened.

``offset`` and ``limit`` pick bytes, then ``head`` or ``tail`` lines of them; a file that
states its size is streamed (its tail found by reading backwards from the end), one that
does not (``/proc``, ``/sys``) is small by nature and read whole, up to the call's bound.
Like ``files.py`` it imports nothing of the API contract, so the helper starts lean.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from pulumi_leap0.runner.files import CHUNK, Refused


def read_window(fd: int, size: int, *, offset: int, limit: int | None, head: int | None,
                tail: int | None, max_bytes: int) -> Iterator[bytes]:
    """The bytes ``[offset, offset + limit)``, then only their first ``head`` or last
    ``tail`` lines (lines end at ``\\n``). A file that states its size is streamed (``tail``
    found by reading backwards from the end); one that does not (``/proc``, ``/sys``) is
    small by nature and read whole, up to ``max_bytes``."""
    end = None if limit is None else offset + limit
    too_large = Refused("path", f"is larger than {max_bytes} bytes: read it in parts with "
                        "offset and limit")
    if size == 0:
        yield from _small_window(fd, offset, end, head, tail, max_bytes, too_large)
        return
    stop = size if end is None else min(size, end)
    start = min(offset, stop)
    if tail is not None:
        start = _tail_start(lambda n, at: os.pread(fd, n, at), start, stop, tail)
    if head is None and stop - start > max_bytes:
        raise too_large
    sent = 0
    lines_left = head
    position = start
    while position < stop:
        chunk = os.pread(fd, min(CHUNK, stop - position), position)
        if not chunk:
            return  # it shrank meanwhile
        position += len(chunk)
        if lines_left is not None:
            chunk, lines_left = _head(chunk, lines_left)
        sent += len(chunk)
        if sent > max_bytes:
            raise too_large
        if chunk:
            yield chunk
        if lines_left == 0:
            return


def _small_window(fd: int, offset: int, end: int | None, head: int | None, tail: int | None,
                  max_bytes: int, too_large: Refused) -> Iterator[bytes]:
    wanted = offset + max_bytes + 1 if end is None else min(end, offset + max_bytes + 1)
    parts: list[bytes] = []
    total = 0
    while total < wanted:
        chunk = os.read(fd, min(CHUNK, wanted - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    data = b"".join(parts)[offset:end]
    if len(data) > max_bytes:
        raise too_large
    if tail is not None:
        data = data[_tail_start(lambda n, at: data[at:at + n], 0, len(data), tail):]
    elif head is not None:
        data = _head(data, head)[0]
    if data:
        yield data


def _head(chunk: bytes, lines: int) -> tuple[bytes, int]:
    """``chunk`` up to and with its ``lines``-th newline, and how many lines are left."""
    position = 0
    while lines > 0:
        found = chunk.find(b"\n", position)
        if found < 0:
            return chunk, lines
        lines -= 1
        position = found + 1
    return chunk[:position], 0


def _tail_start(pread: Callable[[int, int], bytes], start: int, stop: int, lines: int) -> int:
    """Where the last ``lines`` lines of ``[start, stop)`` begin, reading backwards."""
    if lines == 0:
        return stop
    end = stop
    if stop > start and pread(1, stop - 1) == b"\n":
        end -= 1  # the last line's own newline does not start a line
    found = 0
    while end > start:
        low = max(start, end - CHUNK)
        block = pread(end - low, low)
        high = len(block)
        while (index := block.rfind(b"\n", 0, high)) >= 0:
            found += 1
            if found == lines:
                return low + index + 1
            high = index
        end = low
    return start
