"""The exporter's one-line messages on stderr (the HTTP server's and the OTLP pusher's), in the CLI's
`perftop: ` form."""

from __future__ import annotations

import sys

from perftop.render.units import safe_text


def say(message: str) -> None:
    """One `perftop: ` line on stderr, with any control character in it (paths, errors) escaped."""
    sys.stderr.write(f"perftop: {safe_text(message, newlines=False)}\n")
    sys.stderr.flush()
