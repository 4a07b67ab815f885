"""What `perftop run` does inside the program: start the agent, and instrument SQLAlchemy (and Django's
ORM) when imported.

The bootstrap `sitecustomize` calls `start_agent()` (from a start-up thread) and `instrument()` (from
its post-import hook, when the program imports SQLAlchemy), so a program without SQLAlchemy pays nothing;
the framework hook on `django.db` calls `instrument_django()`.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("perftop")


def _slow_ms() -> float:
    try:
        return float(os.environ.get("PERFTOP_SLOW_MS", "100"))
    except ValueError:
        return 100.0


def start_agent() -> None:
    """Start the agent, named by PERFTOP_NAME (default: the program's name). Never raises."""
    import perftop

    perftop.start(name=os.environ.get("PERFTOP_NAME") or None)


def instrument() -> None:
    """Instrument every SQLAlchemy Engine, with PERFTOP_SLOW_MS as the slow-query threshold."""
    try:
        import perftop

        perftop.instrument_sqlalchemy(None, slow_ms=_slow_ms())
    except Exception:
        log.warning("perftop: could not instrument SQLAlchemy", exc_info=True)


def instrument_django() -> None:
    """Instrument Django's database layer, with PERFTOP_SLOW_MS as the slow-query threshold."""
    try:
        import perftop

        perftop.instrument_django(slow_ms=_slow_ms())
    except Exception:
        log.warning("perftop: could not instrument Django's database layer", exc_info=True)
