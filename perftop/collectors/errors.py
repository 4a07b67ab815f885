"""Errors raised by the collectors.

`str(exc)` is always a one-line message fit for the user (the CLI prints it after `perftop: `), so callers
never need to look at psutil's exceptions or at errno values.
"""

from __future__ import annotations


class CollectorError(Exception):
    """Base of every error a collector raises on purpose."""


class NoSuchProcessError(CollectorError):
    """The PID does not exist, has exited, or is a zombie waiting to be reaped."""

    def __init__(self, pid: int, message: str | None = None) -> None:
        self.pid = pid
        super().__init__(message or f"no process with PID {pid}")


class AccessDeniedError(CollectorError):
    """The PID exists but this user may not read what perftop needs from it."""

    def __init__(self, pid: int, message: str) -> None:
        self.pid = pid
        super().__init__(message)
