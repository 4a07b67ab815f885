"""What goes wrong with a recording: the one exception every reader and writer raises, and the one-line
text of a database error, so that a damaged or foreign file is a `perftop: ...` line, never a traceback."""

from __future__ import annotations


class RecordingError(Exception):
    """A recording cannot be written or read; the message is one line fit for `perftop: ...`."""


MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError, RecursionError)
"""What reading a recorded document of the wrong shape raises (a field of the wrong type, missing...)."""


def db_message(exc: BaseException) -> str:
    """The first line of what the database driver said (SQLAlchemy wraps it in `orig`), or the type."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return text.splitlines()[0] if text else type(exc).__name__
