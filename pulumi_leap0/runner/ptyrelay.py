"""A terminal's relay: run *inside* a sandbox, as its user, by the sandbox's own Python.

The runner (``terminals.py``) starts this file's source with ``python3 -I`` through the
exec chain (``exec.exec_argv``: the sandbox's cgroup, every namespace, its root, its user),
so the pseudo-terminal comes from the sandbox's own devpts (bubblewrap's ``--dev``) and
the shell is an ordinary process of the sandbox; no host terminal ever reaches it.

It speaks over three pipes the runner holds. stdin carries frames, ``kind`` (one byte)
and ``length`` (two bytes, network order) then the payload: ``d`` bytes typed at the
terminal, ``r`` a new size (columns and rows, two bytes each). stdout carries the
terminal's output as it comes. stderr says once whether the shell started (``R``) or why
not (``E<errno>``), then closes.

Every buffer is bounded: when the shell does not read, the relay stops reading stdin; when
the runner does not read, it stops reading the terminal, and the shell blocks on its own
output. The session ends when stdin closes (the runner ended it) or the shell exits; then
the shell's process group gets SIGHUP, as from a terminal hung up. Standard library only,
and Python 3.9 syntax at most: it runs on whatever ``python3`` the template has.
"""

import contextlib
import errno
import fcntl
import os
import pty
import select
import signal
import struct
import sys
import termios
import time

HEADER = struct.Struct("!cH")
SIZE = struct.Struct("!HH")
DATA, RESIZE = b"d", b"r"
#: Bytes held for each direction before the relay stops reading that direction's source.
BUFFER_BYTES = 64 * 1024
SHELLS = ("/bin/bash", "/bin/sh")


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def main() -> None:
    cols, rows, cwd = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]  # [1]: the source's fd
    try:
        os.chdir(cwd)
    except OSError as exc:
        os.write(2, b"E%d" % (exc.errno or errno.EIO))
        return
    shell = next((s for s in SHELLS if os.access(s, os.X_OK)), None)
    if shell is None:
        os.write(2, b"E%d" % errno.ENOENT)
        return
    try:
        pid, master = pty.fork()
    except OSError as exc:
        os.write(2, b"E%d" % (exc.errno or errno.EIO))
        return
    if pid == 0:
        try:
            _set_size(0, cols, rows)
            os.execv(shell, [shell])
        finally:
            os._exit(127)
    os.write(2, b"R")
    os.close(2)
    try:
        _relay(master)
    finally:
        _hang_up(pid)


def _relay(master: int) -> None:
    for fd in (0, 1, master):
        os.set_blocking(fd, False)
    incoming = bytearray()  # frames from the runner, not yet whole
    to_shell = bytearray()
    to_host = bytearray()
    shell_open = True
    while shell_open or to_host:
        readers: list[int] = []
        if len(to_shell) < BUFFER_BYTES:
            readers.append(0)
        if shell_open and len(to_host) < BUFFER_BYTES:
            readers.append(master)
        writers: list[int] = []
        if to_shell and shell_open:
            writers.append(master)
        if to_host:
            writers.append(1)
        readable, writable, _ = select.select(readers, writers, [])
        if 0 in readable:
            chunk = os.read(0, BUFFER_BYTES)
            if not chunk:
                return  # the runner ended the session
            incoming += chunk
            _take_frames(incoming, to_shell, master)
        if master in readable:
            try:
                chunk = os.read(master, BUFFER_BYTES)
            except OSError as exc:  # EIO: the shell and every holder of its terminal ended
                if exc.errno != errno.EIO:
                    raise
                chunk = b""
            if chunk:
                to_host += chunk
            else:
                shell_open = False
        if master in writable:
            with contextlib.suppress(BlockingIOError):
                del to_shell[:os.write(master, to_shell)]
        if 1 in writable:
            try:
                del to_host[:os.write(1, to_host)]
            except BlockingIOError:
                pass
            except BrokenPipeError:
                return


def _take_frames(incoming: bytearray, to_shell: bytearray, master: int) -> None:
    while len(incoming) >= HEADER.size:
        kind, length = HEADER.unpack_from(incoming)
        end = HEADER.size + length
        if len(incoming) < end:
            return
        payload = bytes(incoming[HEADER.size:end])
        del incoming[:end]
        if kind == DATA:
            to_shell += payload
        elif kind == RESIZE and length == SIZE.size:
            cols, rows = SIZE.unpack(payload)
            _set_size(master, cols, rows)  # the kernel sends SIGWINCH to the foreground


def _hang_up(pid: int) -> None:
    for sig in (signal.SIGHUP, signal.SIGCONT):
        with contextlib.suppress(OSError):
            os.killpg(pid, sig)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.01)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
