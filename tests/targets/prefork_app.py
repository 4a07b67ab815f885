"""A plain WSGI app for gunicorn under `perftop run` (the pre-fork tests).

Routes: `/` answers at once; `/burn` spins in `planted_cpu_loop` for about 20 ms of CPU (what a fan-out
profile must find in every worker); `/query` runs one SELECT through SQLAlchemy on the SQLite file named
by $PREFORK_DB (what EXPLAIN from the master must find in a worker); `/grow` keeps one more 64 KiB buffer
(what a memory diff per worker must find, in the worker that answered). Every answer counts `app.served`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import perftop
import perftop.wsgi

_engine: Any = None
GROW_BYTES = 64 * 1024
_kept: list[bytearray] = []


def planted_allocation() -> int:
    """Keep one more GROW_BYTES buffer for the life of the worker."""
    _kept.append(bytearray(GROW_BYTES))
    return len(_kept)


def planted_cpu_loop(seconds: float) -> int:
    """Burn CPU for `seconds` of process time."""
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return n


def _query() -> int:
    global _engine
    import sqlalchemy

    if _engine is None:
        _engine = sqlalchemy.create_engine(f"sqlite:///{os.environ['PREFORK_DB']}")
    with _engine.connect() as conn:
        rows = conn.execute(
            sqlalchemy.text("SELECT id, name FROM prefork_items WHERE name = :name"), {"name": "b"}
        ).fetchall()
    return len(rows)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/burn":
        body = str(planted_cpu_loop(0.02))
    elif path == "/grow":
        body = str(planted_allocation())
    elif path == "/query":
        body = str(_query())
    else:
        body = "ok"
    perftop.count("app.served", 1)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{os.getpid()} {body}\n".encode()]


application = perftop.wsgi.Middleware(app)
