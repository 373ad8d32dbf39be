"""A PTY session's WebSocket: bytes both ways between the client and the sandbox's relay.

No thread is held while a terminal is connected: the relay's pipes are non-blocking and
waited on by the event loop, so an idle terminal costs two file descriptors, and a
terminal whose sandbox stopped reading (paused, busy) stalls its own connection only.
Input waits for the pipe to take it before the next message is read, so a client typing
faster than the shell reads is slowed by TCP, not buffered here.

One connection per session at a time: a new one takes over and the older is closed
(a client reconnecting after a network blip is not locked out by its own dead socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from starlette.websockets import WebSocket, WebSocketDisconnect

from pulumi_leap0 import spec
from pulumi_leap0.backend import runtime

READ_BYTES = 64 * 1024
#: Close codes: the session ended (normal), a message too large, another connection took over.
ENDED, TOO_LARGE, TAKEN_OVER = 1000, 1009, 4000

_current: dict[tuple[str, str], asyncio.Event] = {}


async def _ready(fd: int, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    add, remove = ((loop.add_writer, loop.remove_writer) if write
                   else (loop.add_reader, loop.remove_reader))

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    add(fd, wake)
    try:
        await done
    finally:
        remove(fd)


async def _output(websocket: WebSocket, fd: int) -> None:
    while True:
        try:
            data = os.read(fd, READ_BYTES)
        except BlockingIOError:
            await _ready(fd, write=False)
            continue
        except OSError:
            data = b""
        if not data:
            return  # the relay ended: the shell exited, the session or the sandbox is gone
        await websocket.send_bytes(data)


async def _input(websocket: WebSocket, fd: int) -> int:
    """Until the client leaves; the close code to answer with."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return ENDED
        data = message.get("bytes")
        if data is None:
            data = (message.get("text") or "").encode()
        if len(data) > spec.MAX_PTY_INPUT_BYTES:
            return TOO_LARGE
        for frame in runtime.input_frames(data):
            while True:
                try:
                    os.write(fd, frame)  # at most PIPE_BUF: whole or not at all
                    break
                except BlockingIOError:
                    await _ready(fd, write=True)
                except OSError:
                    return ENDED  # the relay is gone; the output side says so too


async def relay(websocket: WebSocket, sandbox_id: str, session_id: str,
                pipes: tuple[int, int]) -> None:
    """Serve an accepted WebSocket over the session's pipes (ours: closed here)."""
    key = (sandbox_id, session_id)
    previous = _current.get(key)
    if previous is not None:
        previous.set()
    taken_over = _current[key] = asyncio.Event()
    input_fd, output_fd = pipes
    typing = asyncio.create_task(_input(websocket, input_fd))
    tasks: list[asyncio.Task[object]] = [
        asyncio.create_task(_output(websocket, output_fd)), typing,
        asyncio.create_task(taken_over.wait())]
    code = ENDED
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if tasks[2] in done:
            code = TAKEN_OVER
        elif typing in done and not typing.cancelled() and typing.exception() is None:
            code = typing.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if _current.get(key) is taken_over:
            del _current[key]
        os.close(input_fd)
        os.close(output_fd)
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
            await websocket.close(code)
