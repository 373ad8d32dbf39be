"""Errors the runner raises.

File calls raise the ordinary ``OSError`` subclasses (``FileNotFoundError``,
``PermissionError``...) for what the kernel answered the sandbox user, so callers can map
them the way they map any file error, and ``FileCallError`` for a rule or bound of the call
itself; everything else the runner refuses or fails at is a ``RunnerError``.
"""

from __future__ import annotations


class RunnerError(Exception):
    """The runner could not do what was asked. The message never carries secrets."""


class SandboxNotFoundError(RunnerError, LookupError):
    """No sandbox with that id exists on this runner (never started, or destroyed)."""


class SandboxNotRunningError(RunnerError):
    """The sandbox exists (its writable layer is kept) but has no running processes."""


class SandboxFrozenError(RunnerError):
    """The sandbox is paused: thaw it before running commands in it."""


class FileCallError(RunnerError):
    """A file call refused by a rule or a bound of its work; ``field`` names the input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class FileCallAborted(RunnerError):
    """A file call's process ended before it answered: the sandbox stopped, or it was out of
    memory or processes for it."""


class FileCallOSError(OSError):
    """What the kernel answered about one named input of a file call (``dst_path``,
    ``files[2]``): an ``OSError`` with the errno, and ``field``."""

    def __init__(self, code: int, message: str, field: str) -> None:
        super().__init__(code, message)
        self.field = field
class TerminalNotFoundError(RunnerError, LookupError):
    """The sandbox has no PTY session with that id."""


class TerminalConflictError(RunnerError):
    """A PTY session cannot be made or changed now (its id is taken, the sandbox is at its
    session limit, the shell does not read)."""


class TerminalInputError(RunnerError):
    """A PTY session refused for one of its inputs; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class TerminalTimeoutError(RunnerError, TimeoutError):
    """A PTY session's shell did not start in time."""
