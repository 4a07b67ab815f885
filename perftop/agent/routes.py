"""Per-request breakdown: for each web route, how much of a request is SQL, how many queries it runs, and
the slowest recent requests with their queries in order (a waterfall).

The middleware (`perftop.wsgi.timed`, `perftop.asgi.timed`, and so the zero-code framework hooks) opens a
`Trace` for each request in a context variable, so that sync servers (one thread per request) and async
ones (one task per request; a thread that `asyncio.to_thread` or anyio starts copies the context) each
see their own, and nothing leaks between concurrent requests. The SQL hook adds every finished query to
the current trace (`note_query`: one context-variable read and an append when no request is open: a
script's queries cost nothing more). When the request ends, its figures are queued; the agent thread
folds them into per-route sketches when a viewer asks (`snapshot`), off the request's path.

Everything is bounded: routes (`MAX_ROUTES`, the rest counted as dropped), queries kept per request for the
waterfall (`MAX_TRACE_QUERIES`), fingerprints per route, slowest requests per route, and the queue of
finished requests (past `MAX_PENDING`, dropped and counted). Standard library only.
"""

from __future__ import annotations

import collections
import contextvars
import os
import threading
import time
from typing import Any

from perftop.wire.sketch import Sketch

ROUTE_KEY = "perftop.route"
"""Where a framework hook leaves the route template of a live request (WSGI environ, ASGI scope)."""
TIMED_KEY = "perftop.timed"
"""Set on a request by the outermost timing wrapper; inner ones pass the request through."""

MAX_ROUTES = 500
MAX_TRACE_QUERIES = 100
MAX_FINGERPRINTS = 100
"""Distinct fingerprints counted per route (the most frequent are reported)."""
TOP_FINGERPRINTS = 5
SLOWEST_KEPT = 5
MIN_FOR_P99 = 20
"""Below this many requests, a route's 'slow' means slower than every earlier one (no p99 yet)."""
MAX_PENDING = 100_000
MAX_ROUTES_PER_FINGERPRINT = 8
"""Routes remembered per fingerprint (the `routes` of a queries row: which endpoints run it)."""
MAX_ROUTED_FINGERPRINTS = 2_000

_pc = time.perf_counter_ns


class Trace:
    """One live request: its SQL time, its query count and (for the waterfall) its first queries."""

    __slots__ = ("at", "queries", "query_count", "sql_ns")

    def __init__(self) -> None:
        self.at = time.time()
        self.sql_ns = 0
        self.query_count = 0
        self.queries: list[tuple[str, int, int | None, dict[str, Any] | None]] = []

    def add(self, fingerprint: str, duration_ns: int, rows: int | None, site: dict[str, Any] | None) -> None:
        self.sql_ns += duration_ns
        self.query_count += 1
        if len(self.queries) < MAX_TRACE_QUERIES:
            self.queries.append((fingerprint, duration_ns, rows, site))


current: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("perftop_request", default=None)
"""The request being served in this thread or task, if any."""


def begin() -> Trace:
    """Open the trace of a request that starts now (the middleware calls this)."""
    trace = Trace()
    current.set(trace)
    return trace


def note_query(fingerprint: str, duration_ns: int, rows: int | None, site: dict[str, Any] | None) -> None:
    """A query finished (the SQL hook calls this): it counts towards the request being served, if any."""
    trace = current.get()
    if trace is not None:
        trace.add(fingerprint, duration_ns, rows, site)


class _Route:
    """What one route's finished requests add up to."""

    __slots__ = (
        "count",
        "duration",
        "duration_ns",
        "errors",
        "fingerprints",
        "queries",
        "queue",
        "slowest",
        "sql",
        "sql_ns",
    )

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.duration = Sketch()
        """Request durations, ns (as every timing sketch, so the exporter digests them alike)."""
        self.sql = Sketch()
        """SQL time per request, ns."""
        self.queries = Sketch()
        """Queries per request."""
        self.queue = Sketch()
        """Queue wait (X-Request-Start), ns."""
        self.duration_ns = 0
        self.sql_ns = 0
        self.fingerprints: dict[str, int] = {}
        self.slowest: collections.deque[dict[str, Any]] = collections.deque(maxlen=SLOWEST_KEPT)

    def threshold_ns(self) -> float:
        """How slow a request must be to join the slowest list: the route's p99, or its max so far."""
        if self.count >= MIN_FOR_P99:
            return self.duration.quantile(0.99) or 0.0
        return self.duration.max if self.count else 0.0

    def add(self, duration_ns: int, error: bool, queue_ms: float | None, trace: Trace) -> None:
        ms = duration_ns / 1e6
        slow = duration_ns >= self.threshold_ns()
        self.count += 1
        self.errors += error
        self.duration.add(float(duration_ns))
        self.duration_ns += duration_ns
        self.sql.add(float(trace.sql_ns))
        self.sql_ns += trace.sql_ns
        self.queries.add(float(trace.query_count))
        if queue_ms is not None:
            self.queue.add(queue_ms * 1e6)
        for fingerprint, _, _, _ in trace.queries:
            if fingerprint in self.fingerprints or len(self.fingerprints) < MAX_FINGERPRINTS:
                self.fingerprints[fingerprint] = self.fingerprints.get(fingerprint, 0) + 1
        if slow:
            self.slowest.append(
                {
                    "at": trace.at,
                    "duration_ms": ms,
                    "sql_ms": trace.sql_ns / 1e6,
                    "query_count": trace.query_count,
                    "queries": [
                        {"fingerprint": fp, "ms": ns / 1e6, "rows": rows, "call_site": site}
                        for fp, ns, rows, site in trace.queries
                    ],
                }
            )

    def to_dict(self) -> dict[str, Any]:
        top = sorted(self.fingerprints.items(), key=lambda kv: -kv[1])[:TOP_FINGERPRINTS]
        return {
            "count": self.count,
            "errors": self.errors,
            "duration_ns": self.duration.to_dict(),
            "sql_ns": self.sql.to_dict(),
            "queries": self.queries.to_dict(),
            "queue_ns": self.queue.to_dict(),
            "duration_ns_total": self.duration_ns,
            "sql_ns_total": self.sql_ns,
            "top_fingerprints": [{"fingerprint": fp, "requests": n} for fp, n in top],
            "slowest": sorted(self.slowest, key=lambda r: -r["duration_ms"]),
        }


_pending: collections.deque[tuple[str, int, bool, float | None, Trace]] = collections.deque()
_routes: dict[str, _Route] = {}
_fp_routes: dict[str, dict[str, None]] = {}
"""By fingerprint: the routes whose requests ran it, first seen first (bounded both ways)."""
_lock = threading.Lock()
dropped = {"requests": 0, "routes": 0}
"""Requests not counted because the queue was full, and routes past MAX_ROUTES."""


def end(trace: Trace, route: str, duration_ns: int, error: bool, queue_ms: float | None) -> None:
    """The request of `trace`, named `route` ("GET /orders/{id}"), ended: queue it for the agent thread."""
    if current.get() is trace:
        current.set(None)
    if len(_pending) >= MAX_PENDING:
        dropped["requests"] += 1
        return
    _pending.append((route, duration_ns, error, queue_ms, trace))


def snapshot() -> dict[str, Any]:
    """Fold the finished requests in and return every route's figures (the `requests` of `stats`)."""
    with _lock:
        _fold()
        return {route: stats.to_dict() for route, stats in _routes.items()}


def _fold() -> None:
    """Fold the finished requests into their routes (the caller holds `_lock`)."""
    while _pending:
        try:
            route, duration_ns, error, queue_ms, trace = _pending.popleft()
        except IndexError:
            break
        stats = _routes.get(route)
        if stats is None:
            if len(_routes) >= MAX_ROUTES:
                dropped["routes"] += 1
                continue
            stats = _routes[route] = _Route()
        stats.add(duration_ns, error, queue_ms, trace)
        _note_routes(route, trace)


def _note_routes(route: str, trace: Trace) -> None:
    for fingerprint in {q[0] for q in trace.queries}:
        routes = _fp_routes.get(fingerprint)
        if routes is None:
            if len(_fp_routes) >= MAX_ROUTED_FINGERPRINTS:
                continue
            routes = _fp_routes[fingerprint] = {}
        if route not in routes and len(routes) < MAX_ROUTES_PER_FINGERPRINT:
            routes[route] = None


def routes_by_fingerprint() -> dict[str, list[str]]:
    """By fingerprint, the routes whose finished requests ran it, sorted (one fold for a whole stats)."""
    with _lock:
        _fold()
        return {fp: sorted(routes) for fp, routes in _fp_routes.items()}


def reset_after_fork() -> None:
    """A forked child serves its own requests: drop what the parent had."""
    global _lock
    _lock = threading.Lock()
    _pending.clear()
    _routes.clear()
    _fp_routes.clear()
    dropped["requests"] = dropped["routes"] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=reset_after_fork)
