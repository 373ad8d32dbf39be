"""Errors the runner raises.

Filesystem helpers raise the ordinary ``OSError`` subclasses (``FileNotFoundError``,
``PermissionError``...) so callers can map them the way they map any file error; everything
else the runner refuses or fails at is a ``RunnerError``.
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
