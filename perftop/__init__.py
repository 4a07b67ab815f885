"""perftop: a live performance monitor for Python services.

The instrumentation API. Importing it needs only the standard library (no Textual, psutil or
SQLAlchemy), and recording works before `start()`: `start()` only makes the data visible to viewers.

    import perftop
    perftop.start()
    @perftop.time_it("checkout")
    def checkout(): ...
    with perftop.timer("render"): ...
    perftop.count("cache.hit"); perftop.gauge("queue.depth", 17); perftop.observe("upstream", 12.5)
"""

from __future__ import annotations

import importlib

from perftop._version import __version__

TYPE_CHECKING = False  # not `typing`: importing it costs an app, and `perftop run`, 10 ms and more
if TYPE_CHECKING:
    from typing import Any

    from perftop.agent import socket_file, start, stop
    from perftop.agent.loop import watch_loop
    from perftop.agent.recorder import count, gauge, observe, time_it, timer

_LAZY = {
    "socket_file": "perftop.agent",
    "start": "perftop.agent",
    "stop": "perftop.agent",
    "count": "perftop.agent.recorder",
    "gauge": "perftop.agent.recorder",
    "observe": "perftop.agent.recorder",
    "time_it": "perftop.agent.recorder",
    "timer": "perftop.agent.recorder",
    "watch_loop": "perftop.agent.loop",
}
"""Where each name of the API lives. They are imported on first use, so that the `perftop` command (which
imports this package too) starts fast; after that first use a name is a plain module attribute."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'perftop' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "__version__",
    "count",
    "gauge",
    "instrument_django",
    "instrument_sqlalchemy",
    "observe",
    "socket_file",
    "start",
    "stop",
    "time_it",
    "timer",
    "watch_loop",
]


def instrument_sqlalchemy(engine: Any = None, slow_ms: float = 100, keep_values: bool = False) -> None:
    """Time every SQLAlchemy execution of `engine` (None: every Engine in the process) by query
    fingerprint; executions slower than `slow_ms` go to the slow list. SQLAlchemy is imported only here.

    Statement values (error text, EXPLAIN plans) are redacted inside the app before any viewer sees
    them; keep_values=True is the app's opt-in to showing them."""
    importlib.import_module("perftop.agent.sqlalchemy").instrument(engine, slow_ms, keep_values=keep_values)


def instrument_django(slow_ms: float = 100, keep_values: bool = False) -> None:
    """Time every query of Django's ORM (every connection of every alias), in the same query statistics
    as SQLAlchemy's: what `perftop run` does by itself, for apps that start the agent themselves. Call it
    once Django is importable (e.g. in settings or wsgi.py); executions slower than `slow_ms` go to the
    slow list. Statement values are redacted inside the app unless keep_values=True."""
    importlib.import_module("perftop.agent.django").instrument(slow_ms, keep_values=keep_values)
