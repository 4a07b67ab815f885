"""The SQLAlchemy hook: per-fingerprint query statistics, N+1 detection, pool usage, slow list, EXPLAIN.

Standard library only at import; SQLAlchemy is imported inside functions, when the app asks for it.

How an execution is recorded (the hot path, in the app's thread):
- One listener per DBAPI call, on the dialect-level `do_execute` / `do_executemany` /
  `do_execute_no_params` events: it calls the dialect's own method itself between two
  `perf_counter_ns()` calls and returns True, so SQLAlchemy makes one event dispatch per execution
  instead of a before/after pair.
- A query's time is the app's: from the start of `cursor.execute()` until its result is fully fetched
  or closed, whichever comes first (round trip, driver and fetching included; not server time). For
  a result read row by row, what the app does between two rows is inside that span too.
  SQLite's `execute()` returns at the first row and scans while rows are fetched, and so do server-side
  cursors (`stream_results`, `yield_per`): timing `execute()` alone would miss the work. A statement
  that returns rows gets a small `_Open` record on its execution context; `CursorResult._soft_close`
  (wrapped once, on the class: what SQLAlchemy calls when the rows are exhausted or the result closed)
  ends it. A result never fetched nor closed ends when the connection goes back to the pool or when
  its context is freed (`_Open.__del__`), whichever comes first. Statements without rows end at
  `execute()`'s return, as before. The slow list, the time windows and the sketches all use that end;
  a slow entry's call site is where the result was finished (usually the line that executed it, as in
  `conn.execute(...).all()`). N+1 counts executions, so it is counted at `execute()`. Cost: about
  2-3 us more per query that returns rows (tests/perf/bench_sql_hook.py).
- The fingerprint comes from a dict keyed by the raw statement text (one lookup when seen before), and
  one tuple is appended to a list. No lock: appends are atomic, and the drain copies then deletes
  exactly the first n items, so an append racing it lands after them and is taken next time.
- Rows: the DBAPI `cursor.rowcount` when it is >= 0: rows affected for INSERT/UPDATE/DELETE, and for
  SELECT the rows the driver received (psycopg, PyMySQL and most client-side cursors). Counting rows
  actually fetched would mean wrapping every fetch, so it is not done; SQLite's SELECT rowcount is -1:
  such executions add nothing to `rows` and are left out of `rows_counted` (the executions whose rows
  are known), so a viewer can say "unknown" rather than 0.
- N+1: a per-checkout dict counts executions per fingerprint on each DBAPI connection (reset at pool
  checkout and checkin). When a count reaches the threshold, the call site is captured once for that
  checkout and fingerprint; that and slow executions are the only times the stack is walked.
- Errors: an exception from the DBAPI call is counted on its fingerprint and re-raised unchanged (a bare
  `raise` in the listener: same object, type, message and traceback). One from a fetch (SQLite raises
  most runtime errors there) is counted too, seen in `CursorFetchStrategy.handle_exception` (wrapped
  once, on the class), which SQLAlchemy then raises as it always does.
- Only the last parameters of each fingerprint (per engine that ran it) are kept, in memory, for EXPLAIN;
  they are never reported.
- Values never leave the app: error text is redacted (`fingerprint.redact_error`) when it is recorded,
  and EXPLAIN shows the fingerprint, a plan with its literals redacted and advice text without values,
  unless the app opted in with `instrument(..., keep_values=True)` (a viewer cannot ask for them).

A daemon thread aggregates the pending tuples once a second into per-fingerprint sketches
(nanoseconds) over sliding windows (see `_Activity`), and `query_stats()` drains before answering.

The statistics are shared with the Django ORM hook (`perftop.agent.django`): it records through
`fingerprint_of`, `record_execution`, `open_execution`/`end_execution`, `record_failure` and
`count_execution`, with its connection aliases (`Source`) where an engine would be, and EXPLAIN and the
server times ask a `Source` for its own connections.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from perftop.agent import explain as _explain
from perftop.agent import fingerprint as _fingerprint
from perftop.agent import routes as request_stats
from perftop.agent.pump import log_once, pump
from perftop.wire.sketch import Sketch, SumWindows, Windows

__all__ = [
    "ExplainError",
    "Source",
    "count_execution",
    "end_execution",
    "explain",
    "explain_failure",
    "fingerprint_of",
    "forget_connection",
    "instrument",
    "is_instrumented",
    "open_execution",
    "query_stats",
    "record_execution",
    "record_failure",
    "start_recording",
    "watch_explain",
]

_request_current = request_stats.current.get
"""The web request being served in this thread or task, if any (its queries feed the route breakdown)."""

SLOW_LIST_MAX = 200
"""Slow executions kept (most recent)."""
N_PLUS_ONE_EVENTS_MAX = 1000
POOL_EVENTS_MAX = 100_000
"""Pool checkouts and waits pending aggregation; past this (no drain for a long time) the oldest go."""
CHECKOUT_TABLE_MAX = 10_000
"""Connections tracked for N+1 counting; the table is emptied past this (connections that vanished
without a checkin event, e.g. invalidated ones, are forgotten that way)."""
DROPPED_KEPT_MAX = 65_536
"""Dropped fingerprints remembered to count them distinctly; past this each further drop counts as new."""
DRAIN_INTERVAL_S = 1.0
EXPLAIN_TIMEOUT_S = 10.0
EXPLAIN_TIMEOUT_MAX_S = 300.0
"""The longest timeout a viewer may ask for (PostgreSQL's statement_timeout tops out at 24.8 days anyway)."""
EXPLAIN_CANCEL_POLL_S = 0.05
"""How often a running EXPLAIN checks whether its viewer went away."""
EXPLAIN_CANCEL_GRACE_S = 2.0
"""A database still running an EXPLAIN this long past its timeout is cancelled by perftop."""
EXPLAIN_CANCEL_JOIN_S = 10.0
"""How long an ended EXPLAIN waits for a cancel it sent to finish."""
ENGINES_PER_FINGERPRINT_MAX = 8
"""Engines remembered per fingerprint for EXPLAIN (the most recent ones)."""
ERROR_TEXT_MAX = 300
ROWCOUNT_UNKNOWN = 2**63
"""A DBAPI rowcount this large is -1 read as unsigned: unknown, like -1."""

_perf = time.perf_counter_ns


class ExplainError(ValueError):
    """A request perftop refuses to EXPLAIN (unknown fingerprint, ANALYZE not allowed): one-line message."""


class Source:
    """Where statements ran when that is not a SQLAlchemy Engine (a Django connection alias, see
    `perftop.agent.django`): it takes an engine's place in the shared statistics, and answers for itself
    what the engine's dialect, pool and connections answer for SQLAlchemy (EXPLAIN, server times)."""

    dialect = "unknown"
    """The database's name as the statistics report it: postgresql, mysql (MariaDB too) or sqlite."""
    keep_values = False
    """The app's opt-in to showing this source's values (error text, EXPLAIN's plan and advice)."""

    def dbapi_connect(self) -> Any:
        """A new DBAPI connection of its own to the same database, outside any pool (the caller closes it)."""
        raise NotImplementedError

    def explain(
        self, statement: str, parameters: Any, analyze: bool, timeout_s: float, cancel: threading.Event
    ) -> tuple[Any, bool, dict[str, dict[str, Any]] | None]:
        """(plan, analyzed, catalog of the plan's tables) of `statement`, run as `_run_explain` does:
        read-only, timed out, cancelled when `cancel` is set; failures as `explain_failure` makes them."""
        raise NotImplementedError


class _FpStats:
    """What is kept per fingerprint besides its timings (those are in `_s.activity`)."""

    __slots__ = ("dialect", "last", "n1_at", "n1_site")

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.n1_at: float | None = None
        self.n1_site: dict[str, Any] | None = None
        self.last: dict[int, tuple[Any, str, Any, bool]] = {}
        """id(engine) -> (engine, statement, parameters, failed) of the last execution on each engine
        that ran this fingerprint, least recent first: what EXPLAIN runs. Never reported."""

    def ran(self, engine: Any, statement: str, parameters: Any, failed: bool) -> None:
        """Remember an execution on `engine` for EXPLAIN (a failed one does not replace a success)."""
        key = id(engine)
        old = self.last.pop(key, None)
        if failed and old is not None and not old[3]:
            self.last[key] = old
            return
        self.last[key] = (engine, statement, parameters, failed)
        if len(self.last) > ENGINES_PER_FINGERPRINT_MAX:
            del self.last[next(iter(self.last))]

    def candidates(self, dialect: str | None) -> list[tuple[Any, str, Any]]:
        """(engine, statement, parameters) to EXPLAIN on: engines where it succeeded first, most
        recent first; only those of `dialect` when given."""
        found = [
            (failed, engine, statement, parameters)
            for engine, statement, parameters, failed in reversed(self.last.values())
            if dialect is None or _dialect_name(engine) == dialect
        ]
        found.sort(key=lambda item: item[0])  # stable: recency kept within successes and failures
        return [(engine, statement, parameters) for _, engine, statement, parameters in found]


class _Cell:
    __slots__ = ("counted", "rows", "sketch")

    def __init__(self) -> None:
        self.sketch = Sketch()
        self.rows = 0
        self.counted = 0
        """Executions whose row count the driver gave."""


class _Activity:
    """Timing sketches (ns) and row sums per fingerprint: since start, and over sliding windows.

    The same rings and slot rules as `perftop.wire.sketch.Windows` (10 one-second slots, 30 ten-second
    slots), but sparse: a slot holds a cell only for the fingerprints executed during it. A `Windows`
    per fingerprint preallocates its 41 sketches (about 10 kB), which is 20 MB at the 2,000-fingerprint
    cap whatever the traffic; here memory follows what actually ran.
    """

    RINGS = ((1, 10), (10, 30))
    """(slot width in seconds, number of slots): fine, then coarse."""

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.total: dict[str, _Cell] = {}
        self.rings: list[dict[int, dict[str, _Cell]]] = [{}, {}]

    def add(self, fp: str, second: int, sketch: Sketch, rows: int, counted: int) -> None:
        for (width, slots), ring in zip(self.RINGS, self.rings, strict=True):
            epoch = second // width
            cells = ring.get(epoch)
            if cells is None:
                cells = ring[epoch] = {}
                for old in [e for e in ring if e <= epoch - slots]:
                    del ring[old]
            self._cell(cells, fp, sketch, rows, counted)
        self._cell(self.total, fp, sketch, rows, counted)

    @staticmethod
    def _cell(cells: dict[str, _Cell], fp: str, sketch: Sketch, rows: int, counted: int) -> None:
        cell = cells.get(fp)
        if cell is None:
            cell = cells[fp] = _Cell()
        cell.sketch.merge(sketch)
        cell.rows += rows
        cell.counted += counted

    def window(self, seconds: float | None, now: float) -> tuple[dict[str, _Cell], float]:
        """Per fingerprint, the merged cell of the last `seconds` (None: since start), and the span
        covered (what rates divide by), with `Windows.window`'s rules. Cells are not to be modified."""
        since_start = max(now - self.started_at, 1e-9)
        if seconds is None or seconds <= 0:
            return self.total, since_start
        k = 0 if seconds <= self.RINGS[0][0] * self.RINGS[0][1] else 1
        width, slots = self.RINGS[k]
        last = int(now // width)
        first = last - min(max(1, math.ceil(seconds / width)), slots) + 1
        out: dict[str, _Cell] = {}
        for epoch, cells in self.rings[k].items():
            if first <= epoch <= last:
                for fp, cell in cells.items():
                    self._cell(out, fp, cell.sketch, cell.rows, cell.counted)
        return out, min(float(seconds), since_start, float(width * slots))


class _PoolState:
    """One pool seen at a checkout: its weakref, checkouts per window, wait times per window."""

    __slots__ = ("checkouts", "pool", "waits")

    def __init__(self, pool: Any, started_at: float) -> None:
        self.pool = weakref.ref(pool)
        self.checkouts = SumWindows(started_at)
        self.waits = Windows(started_at)


SERVER_TIMES_EVERY_S = 10.0
"""How often the database's own execution times are read (pg_stat_statements), in a thread of its own."""
SERVER_TIMES_TIMEOUT_MS = 1000
SERVER_TEXTS_MAX = 20_000
"""pg_stat_statements texts whose fingerprint is remembered (the cache is emptied past this)."""


class _ServerTimes:
    """The database's own mean execution time per fingerprint (PostgreSQL's pg_stat_statements, read on
    a connection of its own, never one of the app's pool), refreshed in the background; `why` says why
    there are none."""

    def __init__(self) -> None:
        self.by_fp: dict[str, float] = {}
        self.why: str | None = None
        self.at = -math.inf
        self.running = False
        self.fp_of: dict[str, str] = {}


class _State:
    """Everything the hook keeps, in one object: what the listeners append to (the hot path), what the
    agent thread's drain task aggregates it into (under `lock`), the settings and the call-site rules."""

    def __init__(self) -> None:
        # -- hot path: appended to by the app's threads without a lock, drained by the agent thread
        self.pending: list[tuple[Any, ...]] = []
        """(fingerprint, duration ns, end perf ns, rowcount, error, statement, parameters, engine) per
        execution. Never replaced (emptied in place), so `pending_append` stays bound to it."""
        self.pending_append = self.pending.append
        self.checkout_counts: dict[int, dict[str, int]] = {}
        """id(DBAPI connection) -> executions per fingerprint since that connection was checked out."""
        self.opened: dict[int, dict[int, weakref.ref[_Open]]] = {}
        """id(DBAPI connection) -> id(record) -> record, of its executions whose result is still open
        (ended at checkin). Weak: a record belongs to its execution context, so it goes when the context
        goes. Emptied past CHECKOUT_TABLE_MAX connections, as `checkout_counts` is."""
        self.results_hooked = False
        """Whether `CursorResult._soft_close` is wrapped; if not, executions end at `execute()`'s return."""
        self.slow_ns = 100_000_000
        self.n1_threshold = 10
        self.suppressed: set[int] = set()
        """Threads whose executions are not recorded (perftop's own EXPLAIN and catalog queries)."""
        self.slow: deque[tuple[str, int, float, dict[str, Any] | None, str | None]] = deque(
            maxlen=SLOW_LIST_MAX
        )
        self.n1_events: deque[tuple[str, float, dict[str, Any] | None]] = deque(maxlen=N_PLUS_ONE_EVENTS_MAX)
        self.checkouts: deque[tuple[int, int]] = deque(maxlen=POOL_EVENTS_MAX)
        """(id(pool), perf ns) per checkout."""
        self.waits: deque[tuple[int, int]] = deque(maxlen=POOL_EVENTS_MAX)
        """(id(pool), ns spent getting a connection from the pool) per checkout."""
        # -- aggregated (the agent thread's drain task and readers, under `lock`)
        self.lock = threading.Lock()
        self.started_at = time.time()
        self.stats: dict[str, _FpStats] = {}
        self.activity = _Activity(self.started_at)
        self.dropped: set[int] = set()
        self.dropped_extra = 0
        self.executions_dropped = 0
        self.pools: dict[int, _PoolState] = {}
        self.pools_lock = threading.Lock()
        self.drain_registered = False
        """Whether the aggregation is one of the agent thread's tasks (and the fork hook registered)."""
        self.server_times = _ServerTimes()
        # -- settings
        self.max_fingerprints = 2000
        self.global_listeners = False
        """Whether the listeners are on every Engine (`instrument(None)`)."""
        self.keep_values_all = False
        """`instrument(None, keep_values=True)`: every engine's values may be shown (the app's opt-in)."""
        self.keep_values_engines: weakref.WeakSet[Any] = weakref.WeakSet()
        """Engines the app instrumented with keep_values=True."""
        self.instrumented: dict[int, Any] = {}
        """id(engine) -> weakref of each engine instrumented by itself (not through the global listeners)."""
        # -- call sites
        self.skip_prefixes: tuple[str, ...] = ()
        self.library_prefixes: tuple[str, ...] = ()
        self.internal_codes: dict[Any, int] = {}
        """Code object -> _APP, _LIBRARY or _INTERNAL (what `_call_site` makes of its frames)."""
        self.layers_seen: tuple[str, ...] | None = None
        """The database layers imported when the call-site prefixes were last computed (None: never)."""


_s = _State()
"""The hook's state."""
_fp_cache = _fingerprint.cache
_fp_get = _fp_cache.get


# -- the listeners (hot path) ----------------------------------------------------------------------------


class _Open:
    """An execution whose rows are not all fetched yet: recorded by `_end` when its result is exhausted
    or closed, its connection checked in, or its execution context freed, whichever comes first.

    Referenced strongly only by its execution context (`context._perftop_open`) and refers to nothing
    that refers back, so it adds no reference cycle; `_s.opened` holds it weakly.
    """

    __slots__ = (
        "__weakref__",
        "engine",
        "fp",
        "opens",
        "parameters",
        "rowcount",
        "site",
        "statement",
        "t0",
        "trace",
    )

    def __init__(
        self,
        fp: str,
        t0: int,
        rowcount: Any,
        statement: str,
        parameters: Any,
        engine: Any,
        opens: dict[int, weakref.ref[_Open]] | None,
    ) -> None:
        self.fp: str | None = fp
        """None once recorded."""
        self.t0 = t0
        self.rowcount = rowcount
        self.statement = statement
        self.parameters = parameters
        self.engine = engine
        self.opens = opens
        """The `_s.opened` table of its DBAPI connection (None if unknown)."""
        self.trace = _request_current()
        """The web request that ran it (its SQL time counts there), or None."""
        self.site = _call_site() if self.trace is not None else None

    def __del__(self) -> None:
        if self.fp is not None:  # nothing ended it before its context was freed
            with contextlib.suppress(Exception):  # at interpreter exit the module may be gone
                _end(self, _perf())


def _end(op: _Open, t1: int) -> None:
    """Record an execution that returned rows, now that its result is finished."""
    fp = op.fp
    if fp is None:
        return
    op.fp = None
    try:
        dt = t1 - op.t0
        _s.pending_append((fp, dt, t1, op.rowcount, 0, op.statement, op.parameters, op.engine))
        opens = op.opens
        if opens is not None:
            opens.pop(id(op), None)
        if dt >= _s.slow_ns:
            _s.slow.append((fp, dt, time.time(), _call_site(), None))
        if op.trace is not None:  # the request that ran it, even if it ends in another's time (GC, pool)
            op.trace.add(fp, dt, _rows(op.rowcount), op.site)
    except Exception as exc:
        log_once("sql-record", "could not record a SQLAlchemy execution", exc=exc)


def _end_failed(op: _Open, context: Any, error: BaseException) -> None:
    """A fetch failed (SQLite reports most runtime errors there): the execution is an error."""
    if op.fp is None:
        return
    op.fp = None
    if op.opens is not None:
        op.opens.pop(id(op), None)
    _record_error(None, op.statement, op.parameters, context, _perf() - op.t0, error)


def _end_open_results(opens: dict[int, weakref.ref[_Open]]) -> None:
    """A connection is back in the pool (or out again): its results still open end now. Its table is
    emptied, not dropped, so a connection per query does not allocate one per query."""
    refs = list(opens.values())
    opens.clear()
    t1 = _perf()
    for ref in refs:
        op = ref()
        if op is not None:
            _end(op, t1)


def _on_do_execute(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
    if context is None or (_s.suppressed and threading.get_ident() in _s.suppressed):
        return False
    t0 = _perf()
    try:
        context.dialect.do_execute(cursor, statement, parameters, context)
    except BaseException as exc:
        _record_error(cursor, statement, parameters, context, _perf() - t0, exc)
        raise
    _record(cursor, statement, parameters, context, t0, _perf())
    return True


def _on_do_execute_no_params(cursor: Any, statement: str, context: Any) -> bool:
    if context is None or (_s.suppressed and threading.get_ident() in _s.suppressed):
        return False
    t0 = _perf()
    try:
        context.dialect.do_execute_no_params(cursor, statement, context)
    except BaseException as exc:
        _record_error(cursor, statement, None, context, _perf() - t0, exc)
        raise
    _record(cursor, statement, None, context, t0, _perf())
    return True


def _on_do_executemany(cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
    if context is None or (_s.suppressed and threading.get_ident() in _s.suppressed):
        return False
    t0 = _perf()
    try:
        context.dialect.do_executemany(cursor, statement, parameters, context)
    except BaseException as exc:
        _record_error(cursor, statement, parameters[0] if parameters else None, context, _perf() - t0, exc)
        raise
    _record(cursor, statement, parameters[0] if parameters else None, context, t0, _perf())
    return True


def _record(cursor: Any, statement: str, parameters: Any, context: Any, t0: int, t1: int) -> None:
    """Record an execution: now if it returned no rows, else once its result is finished (`_Open`)."""
    try:
        fp = _fp_get(statement)
        if fp is None:
            fp = _fingerprint_miss(statement, context)
        # The DBAPI connection, as the pool events see it (SQLAlchemy's async adapters keep it elsewhere).
        conn = getattr(cursor, "connection", None)
        if conn is None:
            conn = getattr(cursor, "_adapt_connection", None)
        key = 0 if conn is None else id(conn)
        engine = context.root_connection.engine
        if (
            cursor.description is None
            or not _s.results_hooked
            or not _open(fp, t0, cursor.rowcount, statement, parameters, engine, key, context)
        ):
            record_execution(fp, t0, t1, cursor.rowcount, statement, parameters, engine)
        if key:
            count_execution(key, fp)
    except Exception as exc:
        log_once("sql-record", "could not record a SQLAlchemy execution", exc=exc)


def record_execution(
    fp: str, t0: int, t1: int, rowcount: Any, statement: str, parameters: Any, engine: Any
) -> None:
    """Record an execution that is over at `t1` (perf ns): its timing, the slow list, the request's SQL.
    `engine`: the Engine or `Source` that ran it. Shared by the hooks; the caller catches exceptions."""
    dt = t1 - t0
    _s.pending_append((fp, dt, t1, rowcount, 0, statement, parameters, engine))
    if dt >= _s.slow_ns:
        _s.slow.append((fp, dt, time.time(), _call_site(), None))
    trace = _request_current()
    if trace is not None:
        trace.add(fp, dt, _rows(rowcount), _call_site())


def open_execution(fp: str, t0: int, rowcount: Any, statement: str, parameters: Any, engine: Any) -> _Open:
    """An execution whose rows are still to be fetched: recorded by `end_execution` (or, failing that,
    when the record is freed). The caller keeps the record with its cursor."""
    return _Open(fp, t0, rowcount, statement, parameters, engine, None)


def end_execution(op: _Open, t1: int) -> None:
    """The rows of an `open_execution` are fetched (or its cursor closed) at `t1`: record it now."""
    _end(op, t1)


def count_execution(key: int, fp: str) -> None:
    """Count an execution of `fp` on the connection `key` for N+1 detection (its call site is taken
    once, when the count reaches the threshold)."""
    counts = _s.checkout_counts.get(key)
    if counts is None:
        counts = _new_checkout(key)
    n = counts.get(fp, 0) + 1
    counts[fp] = n
    if n == _s.n1_threshold:
        _s.n1_events.append((fp, time.time(), _call_site()))


def forget_connection(key: int) -> None:
    """A unit of work on the connection `key` is over (a request, a checkin): its N+1 count starts again."""
    _s.checkout_counts.pop(key, None)


def _open(
    fp: str, t0: int, rowcount: Any, statement: str, parameters: Any, engine: Any, key: int, context: Any
) -> bool:
    """Leave an execution with rows open on its context until its result is finished (False: cannot)."""
    earlier = getattr(context, "_perftop_open", None)
    if earlier is not None:  # an earlier batch of insertmanyvalues (one context): fetched before this ran
        _end(earlier, t0)
    opens = None
    if key:
        opens = _s.opened.get(key)
        if opens is None:
            if len(_s.opened) >= CHECKOUT_TABLE_MAX:
                _s.opened.clear()
            opens = _s.opened[key] = {}
    op = _Open(fp, t0, rowcount, statement, parameters, engine, opens)
    try:
        context._perftop_open = op
    except AttributeError:  # a context class with __slots__: record at execute's end
        op.fp = None
        return False
    if opens is not None:
        opens[id(op)] = weakref.ref(op)
    return True


def _record_error(
    cursor: Any, statement: str, parameters: Any, context: Any, dt: int, error: BaseException
) -> None:
    """A failed execution: counted as an error on its fingerprint (the caller re-raises it unchanged)."""
    try:
        fp = _fp_get(statement)
        if fp is None:
            fp = _fingerprint_miss(statement, context)
        record_failure(fp, dt, statement, parameters, context.root_connection.engine, error)
    except Exception as exc:
        log_once("sql-record", "could not record a SQLAlchemy execution", exc=exc)


def record_failure(
    fp: str, dt: int, statement: str, parameters: Any, engine: Any, error: BaseException
) -> None:
    """Record a failed execution (`dt` ns) as an error of its fingerprint; the caller re-raises it."""
    _s.pending_append((fp, dt, _perf(), 0, 1, statement, parameters, engine))
    trace = _request_current()
    if trace is not None:
        trace.add(fp, dt, None, _call_site())
    if dt >= _s.slow_ns:
        _s.slow.append((fp, dt, time.time(), _call_site(), _error_text(error, engine)))


def _error_text(error: BaseException, engine: Any) -> str:
    """The one line an error shows in the slow list: its type and first line, values redacted unless the
    app opted in. A DBAPI `(code, message)` pair (PyMySQL) has its message redacted inside the pair."""
    args: tuple[Any, ...] = getattr(error, "args", ())
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        message = args[1].splitlines()[0] if args[1] else ""
        if not _keeps_values(engine):
            message = _fingerprint.redact_error(message)
        return f'{type(error).__name__}: ({args[0]}, "{message}")'[:ERROR_TEXT_MAX]
    lines = str(error).splitlines()
    first = lines[0] if lines else ""
    if not _keeps_values(engine):
        first = _fingerprint.redact_error(first)
    return f"{type(error).__name__}: {first}"[:ERROR_TEXT_MAX]


def _keeps_values(engine: Any) -> bool:
    """Whether the app opted in to showing the values of `engine`'s statements."""
    if isinstance(engine, Source):
        return engine.keep_values
    try:
        return _s.keep_values_all or engine in _s.keep_values_engines
    except TypeError:  # not weak-referenceable: never opted in
        return False


def _fingerprint_miss(statement: str, context: Any) -> str:
    """A statement not in the cache: fingerprint it, `"..."` read as a string where the dialect does so
    (MySQL and MariaDB, unless ANSI_QUOTES makes it an identifier), so its value is not in the key."""
    try:
        dialect = context.dialect
        literal_dq = dialect.name in ("mysql", "mariadb") and dialect.identifier_preparer.initial_quote != '"'
    except Exception:
        literal_dq = False
    return fingerprint_of(statement, literal_dq)


def fingerprint_of(statement: str, double_quoted_literals: bool) -> str:
    """The fingerprint of a statement, from the cache when seen before (`"..."` read as a string literal
    when `double_quoted_literals`, as MySQL and MariaDB read it unless ANSI_QUOTES is set)."""
    fp = _fp_get(statement)
    if fp is not None:
        return fp
    try:
        return _fingerprint.fingerprint(statement, double_quoted_literals)
    except Exception as exc:  # the tokenizer is total; this is a last resort that still groups executions
        log_once("sql-fingerprint", "could not fingerprint a statement", exc=exc)
        fp = f"<statement perftop could not read, {len(statement)} chars>"
        _fp_cache[statement] = fp
        return fp


def _new_checkout(key: int) -> dict[str, int]:
    if len(_s.checkout_counts) >= CHECKOUT_TABLE_MAX:
        _s.checkout_counts.clear()
    counts: dict[str, int] = {}
    _s.checkout_counts[key] = counts
    return counts


def _on_checkout(dbapi_connection: Any, connection_record: Any, connection_proxy: Any) -> None:
    """A connection leaves the pool: a fresh N+1 count for it, and one checkout for the pool."""
    try:
        key = id(dbapi_connection)
        _new_checkout(key)
        opens = _s.opened.get(key)
        if opens:  # results left open without a checkin event (an invalidated connection)
            _end_open_results(opens)
        pool = getattr(connection_proxy, "_pool", None)
        if pool is not None:
            key = id(pool)
            if key not in _s.pools:
                _track_pool(pool)
            _s.checkouts.append((key, _perf()))
    except Exception as exc:
        log_once("sql-checkout", "could not record a pool checkout", exc=exc)


def _on_checkin(dbapi_connection: Any, connection_record: Any) -> None:
    """A connection returns to the pool: its N+1 count is over, and so are its results still open."""
    if dbapi_connection is not None:
        key = id(dbapi_connection)
        _s.checkout_counts.pop(key, None)
        opens = _s.opened.get(key)
        if opens:
            try:
                _end_open_results(opens)
            except Exception as exc:
                log_once("sql-checkin", "could not end the open results of a connection", exc=exc)


def _track_pool(pool: Any) -> None:
    """Start following a pool: its state, and a timer around its `_do_get` (what waits for a connection).

    The wait is measured around the pool's internal `_do_get`, replaced on the instance: it is the time
    spent blocked on a full pool plus, when the pool grows, the time to open a new DBAPI connection. A
    pool first seen at a checkout event has that first checkout unmeasured.
    """
    with _s.pools_lock:  # not _s.lock: an app thread must never wait for an aggregation to finish
        key = id(pool)
        state = _s.pools.get(key)
        if state is not None and state.pool() is pool:
            return
        _s.pools[key] = _PoolState(pool, _s.started_at)
    original = getattr(pool, "_do_get", None)
    if original is None or getattr(original, "_perftop_timed", False):
        return

    def _timed_do_get() -> Any:
        t0 = _perf()
        entry = original()
        _s.waits.append((key, _perf() - t0))
        return entry

    _timed_do_get._perftop_timed = True  # type: ignore[attr-defined]
    try:
        pool._do_get = _timed_do_get
    except Exception as exc:
        log_once("sql-pool-wait", "cannot time waits for connections on this pool", exc=exc)


# -- call sites ------------------------------------------------------------------------------------------

_DATABASE_LAYERS = ("sqlalchemy", "django.db")
"""Packages whose frames are never call sites once imported (the database layers perftop hooks)."""


def _init_skip_prefixes() -> None:
    """Frames in these files are never call sites: SQLAlchemy, Django's ORM (`django.db`), perftop's
    agent and middleware, logging, contextlib; and frames of installed libraries and the standard
    library are passed over while an app frame is further up. Run again when a hook is instrumented (a
    database layer imported since is then added)."""
    import sysconfig

    layers: list[str] = []
    for name in _DATABASE_LAYERS:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if path:
            layers += [os.path.dirname(os.path.abspath(path)) + os.sep, os.path.dirname(path) + os.sep]
    agent_dir = os.path.dirname(os.path.abspath(__file__)) + os.sep
    perftop_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _s.internal_codes.clear()
    _s.skip_prefixes = (
        *layers,
        agent_dir,
        os.path.dirname(__file__) + os.sep,
        *(os.path.join(perftop_dir, name) for name in ("__init__.py", "wsgi.py", "asgi.py")),
        os.path.dirname(logging.__file__) + os.sep,
        contextlib.__file__,
    )
    libraries: set[str] = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            libraries.add(os.path.abspath(paths[key]) + os.sep)
    for entry in sys.path:
        if entry.endswith(("site-packages", "dist-packages")):
            libraries.add(os.path.abspath(entry) + os.sep)
    _s.library_prefixes = tuple(sorted(libraries))


_APP, _LIBRARY, _INTERNAL = 0, 1, 2


def _kind_of(code: Any) -> int:
    kind = _s.internal_codes.get(code)
    if kind is None:
        name = code.co_filename
        if name.startswith(_s.skip_prefixes):
            kind = _INTERNAL
        elif name.startswith(_s.library_prefixes) or name.startswith("<frozen"):
            kind = _LIBRARY
        else:
            kind = _APP
        if len(_s.internal_codes) > 20_000:
            _s.internal_codes.clear()
        _s.internal_codes[code] = kind
    return kind


def _rows(rowcount: Any) -> int | None:
    """A DBAPI rowcount as a row count, None where the driver does not know (-1, or -1 read unsigned)."""
    return rowcount if type(rowcount) is int and 0 <= rowcount < ROWCOUNT_UNKNOWN else None


def _django_template_site(frame: Any) -> dict[str, Any] | None:
    """The template file and line of the node a Django template renders in `frame` (a frame of
    `Node.render_annotated`), None where the template has no file (one made from a string)."""
    try:
        node = frame.f_locals.get("self")
        name = node.origin.name
        line = node.token.lineno
    except Exception:
        return None
    if type(name) is not str or name.startswith("<") or type(line) is not int:
        return None
    return {"file": name, "line": line, "function": "template"}


def _call_site() -> dict[str, Any] | None:
    """The first frame of the app's own code (not SQLAlchemy, perftop, the standard library or another
    installed library: an ORM's lazy load inside a Jinja2 loop is placed at the template's line, whose code
    carries the template's file name, and one inside a Django template at that template's line, read from
    the innermost node Django renders); where the stack has none, the first frame outside SQLAlchemy and
    perftop (walks the stack)."""
    frame: Any = sys._getframe(2)
    fallback = None
    library = None
    django_site = None
    while frame is not None:
        code = frame.f_code
        kind = _kind_of(code)
        if kind == _LIBRARY and django_site is None and code.co_name == "render_annotated":
            django_site = _django_template_site(frame)
        if kind != _INTERNAL:
            function = getattr(code, "co_qualname", code.co_name)  # co_qualname: Python 3.11+
            site = {"file": code.co_filename, "line": frame.f_lineno, "function": function}
            if kind == _APP and django_site is not None:
                return django_site
            if kind == _APP and not code.co_filename.startswith("<"):
                template = frame.f_globals.get("__jinja_template__")
                if template is not None:  # a compiled Jinja2 template: its own line, not the Python one
                    with contextlib.suppress(Exception):
                        site["line"] = template.get_corresponding_lineno(frame.f_lineno)
                        site["function"] = "template"
                return site
            if kind == _APP and fallback is None:
                fallback = site  # generated code (`<string>`): keep looking for a real file
            elif kind == _LIBRARY and library is None:
                library = site
        frame = frame.f_back
    return fallback or django_site or library


# -- instrumenting ---------------------------------------------------------------------------------------

_LISTENERS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("do_execute", _on_do_execute),
    ("do_execute_no_params", _on_do_execute_no_params),
    ("do_executemany", _on_do_executemany),
)


def instrument(
    engine: Any = None,
    slow_ms: float = 100.0,
    n_plus_one_threshold: int = 10,
    max_fingerprints: int = 2000,
    keep_values: bool = False,
) -> None:
    """Record every execution of `engine` (None: every Engine of the process, also ones created later).

    keep_values=True is the app's opt-in to showing its statements' values to viewers (error text in the
    slow list, EXPLAIN's plan, advice and statement); by default they are redacted inside the app.
    Idempotent per engine; a later call updates the settings. Never raises: a failure is logged once.
    """
    try:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
        from sqlalchemy.pool import Pool

        start_recording(slow_ms, n_plus_one_threshold, max_fingerprints)
        with _s.lock:
            already = _s.global_listeners
            try:
                _hook_results()
            except Exception as exc:  # queries are then timed to execute's end, as before
                log_once("sql-results", "cannot see when results are fetched", exc=exc)
        if engine is None:
            _s.keep_values_all = bool(keep_values)
            if not already:
                for name, fn in _LISTENERS:
                    event.listen(Engine, name, fn)
                event.listen(Pool, "checkout", _on_checkout)
                event.listen(Pool, "checkin", _on_checkin)
                with _s.lock:
                    _s.global_listeners = True
                    engines = [ref() for ref in _s.instrumented.values()]
                    _s.instrumented.clear()
                for old in engines:  # the global listeners cover them now; one listener per event
                    if old is not None:
                        _remove_engine_listeners(old)
        else:
            engine = getattr(engine, "sync_engine", engine)  # an AsyncEngine wraps a sync one
            if keep_values:
                _s.keep_values_engines.add(engine)
            else:
                _s.keep_values_engines.discard(engine)
            with _s.lock:
                ref = _s.instrumented.get(id(engine))
                done = already or (ref is not None and ref() is engine)
            if not done:
                for name, fn in _LISTENERS:
                    event.listen(engine, name, fn)
                event.listen(engine, "checkout", _on_checkout)
                event.listen(engine, "checkin", _on_checkin)
                with _s.lock:
                    _s.instrumented[id(engine)] = weakref.ref(engine)
            _track_pool(engine.pool)
        _ensure_drain()
    except Exception as exc:
        log_once("sql-instrument", "could not instrument SQLAlchemy", exc=exc)


def start_recording(slow_ms: float, n_plus_one_threshold: int = 10, max_fingerprints: int = 2000) -> None:
    """Set the thresholds every hook shares (the slow list's, N+1's, the fingerprint cap) and start the
    aggregation (an agent thread task): what a hook does before it records anything. Raises on a bad value."""
    _s.slow_ns = max(0, int(float(slow_ms) * 1_000_000))
    _s.n1_threshold = max(2, int(n_plus_one_threshold))
    _s.max_fingerprints = max(1, int(max_fingerprints))
    layers = tuple(name for name in _DATABASE_LAYERS if name in sys.modules)
    if layers != _s.layers_seen:
        _s.layers_seen = layers
        _init_skip_prefixes()
    _ensure_drain()


def _hook_results() -> None:
    """Wrap `CursorResult._soft_close` once: what SQLAlchemy calls when a result's rows are exhausted
    or the result is closed (including `.first()`, `.scalar()`, `.all()`, ORM loads, `yield_per`), so
    the execution's `_Open` record ends there. A result of an engine perftop does not record has no
    record: the wrapper costs it one attribute lookup."""
    if _s.results_hooked:
        return
    from sqlalchemy.engine.cursor import CursorFetchStrategy, CursorResult
    from sqlalchemy.engine.default import DefaultExecutionContext

    original = CursorResult.__dict__.get("_soft_close")
    if original is None:
        log_once("sql-results", "cannot see when results are fetched: queries are timed to execute's end")
        return
    if getattr(original, "_perftop", False):  # wrapped by another copy of this module
        return

    def _soft_close(self: Any, hard: bool = False) -> None:
        original(self, hard)
        op = getattr(self.context, "_perftop_open", None)
        if op is not None and self._soft_closed:
            _end(op, _perf())

    _soft_close._perftop = True  # type: ignore[attr-defined]
    _soft_close.__doc__ = original.__doc__
    _soft_close.__wrapped__ = original  # type: ignore[attr-defined]
    DefaultExecutionContext._perftop_open = None  # type: ignore[attr-defined]
    CursorResult._soft_close = _soft_close  # type: ignore[method-assign]
    _s.results_hooked = True

    # A fetch that fails goes through the strategy's handle_exception, which re-raises it wrapped.
    failed = CursorFetchStrategy.__dict__.get("handle_exception")
    if failed is None:
        return

    def _handle_exception(self: Any, result: Any, dbapi_cursor: Any, err: BaseException) -> Any:
        try:
            op = getattr(result.context, "_perftop_open", None)
            if op is not None:
                _end_failed(op, result.context, err)
        except Exception as exc:
            log_once("sql-fetch-error", "could not record a failed fetch", exc=exc)
        return failed(self, result, dbapi_cursor, err)

    _handle_exception.__doc__ = failed.__doc__
    _handle_exception.__wrapped__ = failed  # type: ignore[attr-defined]
    CursorFetchStrategy.handle_exception = _handle_exception  # type: ignore[method-assign]


def _remove_engine_listeners(engine: Any) -> None:
    from sqlalchemy import event

    pairs: list[tuple[str, Callable[..., Any]]] = [
        *_LISTENERS,
        ("checkout", _on_checkout),
        ("checkin", _on_checkin),
    ]
    for name, fn in pairs:
        if event.contains(engine, name, fn):
            event.remove(engine, name, fn)


def is_instrumented() -> bool:
    """Whether `instrument()` has attached to at least one engine (or to all of them)."""
    with _s.lock:
        return _s.global_listeners or any(ref() is not None for ref in _s.instrumented.values())


def _ensure_drain() -> None:
    """Aggregate every DRAIN_INTERVAL_S on the agent thread (a task registered once), which runs."""
    with _s.lock:
        if not _s.drain_registered:
            _s.drain_registered = True
            pump.every(DRAIN_INTERVAL_S, _drain, "sql-drain", "could not aggregate query statistics")
            pump.on_fork(in_child=_after_fork_in_child)
    pump.ensure_running()


def _drain() -> None:
    with _s.lock:
        _drain_locked()


def _after_fork_in_child() -> None:
    """A forked worker starts empty (its parent's numbers are the parent's), aggregated by its own thread."""
    _s.lock = threading.Lock()
    _s.pools_lock = threading.Lock()
    _s.started_at = time.time()
    _s.activity = _Activity(_s.started_at)
    del _s.pending[:]
    for q in (_s.slow, _s.n1_events, _s.checkouts, _s.waits):
        q.clear()
    _s.checkout_counts.clear()
    _s.opened.clear()
    _s.stats.clear()
    _s.dropped.clear()
    _s.dropped_extra = _s.executions_dropped = 0
    for state in list(_s.pools.values()):
        state.checkouts = SumWindows(_s.started_at)
        state.waits = Windows(_s.started_at)
    if _s.global_listeners or _s.instrumented:
        pump.ensure_running()


@contextlib.contextmanager
def _not_recorded() -> Iterator[None]:
    """Executions of this thread inside the block are not recorded (perftop's own queries)."""
    ident = threading.get_ident()
    _s.suppressed.add(ident)
    try:
        yield
    finally:
        _s.suppressed.discard(ident)


# -- aggregation -----------------------------------------------------------------------------------------


def _drain_locked() -> None:
    """Aggregate everything pending into the windows (caller holds _s.lock)."""
    wall_minus_perf = time.time() - _perf() / 1e9
    n = len(_s.pending)
    if n:
        chunk = _s.pending[:n]
        del _s.pending[:n]
        groups: dict[tuple[str, int], tuple[Sketch, list[int]]] = {}
        """(fingerprint, second) -> (sketch, [rows, executions whose rows are known])."""
        for fp, dt, t_end, rows, err, statement, parameters, engine in chunk:
            stats = _s.stats.get(fp)
            if stats is None:
                if len(_s.stats) >= _s.max_fingerprints:
                    _s.executions_dropped += 1
                    h = hash(fp)
                    if h not in _s.dropped:
                        if len(_s.dropped) < DROPPED_KEPT_MAX:
                            _s.dropped.add(h)
                        else:
                            _s.dropped_extra += 1
                    continue
                stats = _s.stats[fp] = _FpStats(_dialect_name(engine))
            stats.ran(engine, statement, parameters, bool(err))
            second = int(t_end / 1e9 + wall_minus_perf)
            group = groups.get((fp, second))
            if group is None:
                group = groups[(fp, second)] = (Sketch(), [0, 0])
            group[0].add(dt, 1, err)
            # -1 or None: the driver does not know; 2**64 - 1 is -1 unsigned (PyMySQL's unbuffered cursor).
            if type(rows) is int and 0 <= rows < ROWCOUNT_UNKNOWN:
                group[1][0] += rows
                group[1][1] += 1
        for (fp, second), (sketch, (rows_sum, counted)) in groups.items():
            _s.activity.add(fp, second, sketch, rows_sum, counted)
    for _ in range(len(_s.n1_events)):
        fp, at, site = _s.n1_events.popleft()
        found = _s.stats.get(fp)
        if found is not None:
            found.n1_at, found.n1_site = at, site
    _drain_pool_events(wall_minus_perf)


def _drain_pool_events(wall_minus_perf: float) -> None:
    for _ in range(len(_s.checkouts)):
        key, t = _s.checkouts.popleft()
        state = _s.pools.get(key)
        if state is not None:
            state.checkouts.add(t / 1e9 + wall_minus_perf, 1)
    now = time.time()
    for _ in range(len(_s.waits)):
        key, wait = _s.waits.popleft()
        state = _s.pools.get(key)
        if state is not None:
            state.waits.add(now, wait)
    with _s.pools_lock:
        for key, state in list(_s.pools.items()):
            if state.pool() is None:
                del _s.pools[key]


def _dialect_name(engine: Any) -> str:
    if isinstance(engine, Source):
        return engine.dialect
    try:
        return str(engine.dialect.name)
    except Exception:
        return "unknown"


def _ms(ns: float | None) -> float | None:
    return None if ns is None else ns / 1e6


def query_stats(window_s: float | None, now: float | None = None) -> dict[str, Any]:
    """Per-fingerprint statistics over the last `window_s` seconds (None: since start), the slow list,
    the pool, and what the fingerprint cap dropped. Parameter values are never included."""
    if now is None:
        now = time.time()
    routes = request_stats.routes_by_fingerprint()  # before our lock: the two locks are never nested
    with _s.lock:
        _drain_locked()
        rows_out: list[dict[str, Any]] = []
        cells, _span = _s.activity.window(window_s, now)
        for fp, cell in cells.items():
            stats = _s.stats.get(fp)
            sketch = cell.sketch
            if stats is None or sketch.count == 0:
                continue
            p50, p95, p99 = sketch.quantiles((0.5, 0.95, 0.99))
            n1 = stats.n1_at is not None and (window_s is None or stats.n1_at >= now - window_s)
            rows_out.append(
                {
                    "fingerprint": fp,
                    "count": sketch.count,
                    "errors": sketch.errors,
                    "total_ms": sketch.sum / 1e6,
                    "mean_ms": _ms(sketch.mean),
                    "p50_ms": _ms(p50),
                    "p95_ms": _ms(p95),
                    "p99_ms": _ms(p99),
                    "max_ms": _ms(sketch.max),
                    "rows": cell.rows,
                    "rows_counted": cell.counted,
                    "share_percent": 0.0,
                    "n_plus_one": n1,
                    "n_plus_one_site": dict(stats.n1_site) if n1 and stats.n1_site else None,
                    "routes": routes.get(fp, []),
                    "dialect": stats.dialect,
                    "sketch": sketch.to_dict(),
                }
            )
        slow = [
            {
                "fingerprint": fp,
                "duration_ms": dt / 1e6,
                "at": at,
                "call_site": dict(site) if site else None,
                "error": error,
            }
            for fp, dt, at, site, error in reversed(_s.slow.copy())  # app threads append meanwhile
            if window_s is None or at >= now - window_s
        ]
        pool = _pool_stats(window_s, now)
        overflow = {
            "fingerprints_dropped": len(_s.dropped) + _s.dropped_extra,
            "executions_dropped": _s.executions_dropped,
        }
    grand = sum(r["total_ms"] for r in rows_out)
    server, why = _server_times()
    for r in rows_out:
        r["share_percent"] = 100.0 * r["total_ms"] / grand if grand > 0 else 0.0
        r["server_mean_ms"] = server.get(r["fingerprint"]) if r["dialect"] == "postgresql" else None
    rows_out.sort(key=lambda r: r["total_ms"], reverse=True)
    return {
        "queries": rows_out,
        "slow_queries": slow,
        "pool": pool,
        "overflow": overflow,
        "slow_ms": _s.slow_ns / 1e6,
        "server_times": why,
    }


def _server_times() -> tuple[dict[str, float], str | None]:
    """The last figures read, starting a refresh when they are old (the caller never waits for it)."""
    engines = {
        id(engine): engine
        for stats in list(_s.stats.values())
        if stats.dialect == "postgresql"
        for engine, _, _, _ in list(stats.last.values())
    }
    if not engines:
        return {}, None
    now = time.monotonic()
    if not _s.server_times.running and now - _s.server_times.at >= SERVER_TIMES_EVERY_S:
        _s.server_times.running = True
        _s.server_times.at = now
        threading.Thread(
            target=_refresh_server_times, args=(list(engines.values()),), name="perftop-pgstat", daemon=True
        ).start()
    return _s.server_times.by_fp, _s.server_times.why


def _refresh_server_times(engines: list[Any]) -> None:
    totals: dict[str, list[float]] = {}
    why = None
    try:
        for engine in engines[:4]:
            try:
                rows = _read_pg_stat_statements(engine)
            except Exception as exc:
                text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                why = f"no server times: pg_stat_statements is not readable ({type(exc).__name__}: {text})"
                continue
            for query, calls, total_ms in rows:
                fp = _s.server_times.fp_of.get(query)
                if fp is None:
                    fp = _fingerprint.fingerprint(query)
                    if len(_s.server_times.fp_of) > SERVER_TEXTS_MAX:
                        _s.server_times.fp_of.clear()
                    _s.server_times.fp_of[query] = fp
                acc = totals.setdefault(fp, [0.0, 0.0])
                acc[0] += float(calls)
                acc[1] += float(total_ms)
        _s.server_times.by_fp = {fp: t / n for fp, (n, t) in totals.items() if n > 0}
        _s.server_times.why = why if not totals else None
    except Exception as exc:
        log_once("sql-server-times", "could not read the database's own query times", exc=exc)
    finally:
        _s.server_times.running = False


def _read_pg_stat_statements(engine: Any) -> list[tuple[str, float, float]]:
    """(query, calls, total execution ms) of this database's statements, on a short-lived connection."""
    creator = engine.dbapi_connect if isinstance(engine, Source) else getattr(engine.pool, "_creator", None)
    if callable(creator):
        conn = creator()
    else:
        cargs, cparams = engine.dialect.create_connect_args(engine.url)
        conn = engine.dialect.connect(*cargs, **cparams)
    try:
        cursor = conn.cursor()
        cursor.execute(f"SET statement_timeout = {SERVER_TIMES_TIMEOUT_MS}")
        cursor.execute(
            "SELECT query, calls, total_exec_time FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND calls > 0"
        )
        return [(str(q), float(c), float(t)) for q, c, t in cursor.fetchall()]
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()


def _pool_stats(window_s: float | None, now: float) -> dict[str, Any] | None:
    """Summed over the live pools: size, checked out and overflow now; checkouts and waits in the window.

    size/checked_out/overflow come from QueuePool's own counters (`size()`, `checkedout()`,
    `overflow()`, the latter floored at 0); other pool classes report what they have, else 0.
    """
    pools: list[dict[str, Any]] = []
    waits = Sketch()
    checkouts = 0.0
    span = 1e-9
    for state in list(_s.pools.values()):
        pool = state.pool()
        if pool is None:
            continue
        sketch, span_one = state.waits.window(window_s, now)
        span = max(span, span_one)
        waits.merge(sketch)
        n = state.checkouts.window(window_s, now)
        checkouts += n
        pools.append(
            {
                "class": type(pool).__name__,
                "size": _pool_number(pool, "size"),
                "checked_out": _pool_number(pool, "checkedout"),
                "overflow": max(0, _pool_number(pool, "overflow")),
                "checkouts_per_s": n / span_one,
            }
        )
    if not pools:
        return None
    p99 = waits.quantile(0.99)
    return {
        "size": sum(p["size"] for p in pools),
        "checked_out": sum(p["checked_out"] for p in pools),
        "overflow": sum(p["overflow"] for p in pools),
        "checkouts_per_s": checkouts / span,
        "wait_p99_ms": _ms(p99),
        "wait_max_ms": _ms(waits.max) if waits.count else None,
        "pools": pools,
    }


def _pool_number(pool: Any, method: str) -> int:
    fn = getattr(pool, method, None)
    if fn is None:
        return 0
    try:
        value = fn()
    except Exception:
        return 0
    return value if isinstance(value, int) else 0


# -- EXPLAIN ---------------------------------------------------------------------------------------------


def explain(params: dict[str, Any], cancel: threading.Event | None = None) -> dict[str, Any]:
    """EXPLAIN a fingerprint (see `_explain_request`); any failure is an ExplainError whose one line
    has its values redacted (a driver's message can quote them), unless the app opted in."""
    try:
        return _explain_request(params, threading.Event() if cancel is None else cancel)
    except ExplainError:
        raise
    except Exception as exc:
        log_once("sql-explain", "EXPLAIN failed", exc=exc)
        orig = getattr(exc, "orig", None) or exc
        lines = str(orig).splitlines()
        first = _fingerprint.redact_error(lines[0]) if lines else ""
        raise ExplainError(f"EXPLAIN failed: {type(orig).__name__}: {first}"[:ERROR_TEXT_MAX]) from None


def _explain_request(params: dict[str, Any], cancel: threading.Event) -> dict[str, Any]:
    """EXPLAIN the last execution of a fingerprint on an engine that ran it, with advice from the plan.

    params: {"fingerprint": str, "analyze": bool = False, "confirm": bool = False, "timeout_s": float,
    "dialect": str (optional: only an engine of this dialect)}. The engines that ran the fingerprint are
    tried most recent first, those where it succeeded before those where it failed, until one answers.
    ANALYZE runs the statement, so it needs confirm=True and a SELECT that writes nothing, and runs in a
    read-only transaction that is rolled back (a database that refuses it there refuses the ANALYZE).
    Plain EXPLAIN never runs the statement. `cancel` (set when the viewer that asked goes away) cancels
    the statement in the database. The result shows the fingerprint, the plan with its literals redacted
    and advice without values, unless the app opted in with keep_values.
    Raises ExplainError (a ValueError) with a one-line message when the request is refused or fails.
    """
    fp = params.get("fingerprint")
    if not isinstance(fp, str) or not fp:
        raise ExplainError("'fingerprint' must be a non-empty string")
    analyze = bool(params.get("analyze", False))
    confirm = bool(params.get("confirm", False))
    timeout_s = params.get("timeout_s", EXPLAIN_TIMEOUT_S)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ExplainError("'timeout_s' must be a positive number of seconds")
    if timeout_s > EXPLAIN_TIMEOUT_MAX_S:
        raise ExplainError(f"'timeout_s' must be at most {EXPLAIN_TIMEOUT_MAX_S:g} seconds")
    wanted = params.get("dialect")
    if wanted is not None and not isinstance(wanted, str):
        raise ExplainError("'dialect' must be a dialect name such as postgresql, mysql or sqlite")
    with _s.lock:
        _drain_locked()
        stats = _s.stats.get(fp)
        candidates = stats.candidates(wanted) if stats is not None else []
    if not candidates:
        shown = fp if len(fp) <= 80 else fp[:77] + "..."
        where = f" on a {wanted} engine" if wanted else ""
        raise ExplainError(f"unknown fingerprint: {shown!r} (no execution of it{where} was recorded)")
    statement = candidates[0][1]
    kind = _fingerprint.statement_kind(statement)
    if kind not in _EXPLAINABLE:
        raise ExplainError(f"{kind or 'this'} statements have no query plan to EXPLAIN")
    if analyze and not _fingerprint.is_read_only_select(statement):
        raise ExplainError(
            "ANALYZE runs the statement, so it is only allowed for a SELECT that writes nothing"
        )
    if analyze and not confirm:
        raise ExplainError("ANALYZE runs the statement: pass confirm=true to allow it")
    first_failure: _EngineFailed | None = None
    for engine, statement, parameters in candidates:
        try:
            return _explain_on(fp, engine, statement, parameters, analyze, float(timeout_s), cancel)
        except _EngineFailed as exc:  # this engine cannot run it (a table it lacks...): try the next one
            if first_failure is None:
                first_failure = exc
    assert first_failure is not None
    raise ExplainError(str(first_failure))


_EXPLAINABLE = frozenset(
    {"SELECT", "WITH", "VALUES", "TABLE", "INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE"}
)


class _EngineFailed(Exception):
    """The EXPLAIN failed on one engine in a way another engine that ran the fingerprint may not."""


def _explain_on(
    fp: str, engine: Any, statement: str, parameters: Any, analyze: bool, timeout_s: float, cancel: Any
) -> dict[str, Any]:
    dialect = _dialect_name(engine)
    keep = _keeps_values(engine)
    if isinstance(engine, Source):
        plan, analyzed, catalog = engine.explain(statement, parameters, analyze, timeout_s, cancel)
    else:
        mariadb = bool(getattr(engine.dialect, "is_mariadb", False))
        with _not_recorded():
            plan, analyzed = _run_explain(
                engine, dialect, mariadb, statement, parameters, analyze, timeout_s, cancel, keep
            )
            catalog = _catalog(engine, _explain.plan_tables(dialect, plan, statement))
    try:
        advice = _explain.advise(dialect, plan, statement, catalog, analyzed=analyzed, keep_values=keep)
    except Exception as exc:  # a plan shape the advisor does not know: the plan is still worth showing
        log_once("sql-advice", f"could not read advice from a {dialect} plan", exc=exc)
        advice = []
    return {
        "fingerprint": fp,
        "dialect": dialect,
        "statement": statement if keep else fp,
        "plan": plan if keep else _explain.redact_plan(dialect, plan),
        "advice": advice,
        "analyzed": analyzed,
        "values_redacted": not keep,
    }


def statement_timeout_ms(timeout_s: float) -> int:
    """PostgreSQL's statement_timeout for a budget: whole milliseconds rounded up, never 0 (no timeout)."""
    return max(1, math.ceil(timeout_s * 1000))


_READ_ONLY_REFUSALS = frozenset({"25006", 1792})
"""PostgreSQL's read_only_sql_transaction SQLSTATE; MySQL/MariaDB's ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
(1792)."""


def _run_explain(
    engine: Any,
    dialect: str,
    mariadb: bool,
    statement: str,
    parameters: Any,
    analyze: bool,
    timeout_s: float,
    cancel: Any,
    keep: bool,
) -> tuple[Any, bool]:
    """Run the EXPLAIN on a connection of its own from the same engine, in a transaction rolled back
    (read-only on PostgreSQL, and for ANALYZE on MySQL/MariaDB), with a watcher that cancels it in the
    database when the viewer goes away or it outlives its timeout."""
    sql, analyzed = _explain.explain_sql(dialect, statement, analyze, mariadb, timeout_s)
    mysql = dialect in ("mysql", "mariadb")
    started = time.monotonic()
    with engine.connect() as conn:
        done = threading.Event()
        watcher: threading.Thread | None = None
        try:
            if dialect == "postgresql":
                # A real transaction even on an AUTOCOMMIT engine, so SET LOCAL, READ ONLY and the
                # rollback below take effect (the pool resets the isolation level at checkin).
                conn.execution_options(isolation_level="READ COMMITTED")
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {statement_timeout_ms(timeout_s)}")
            elif mysql and analyzed:
                conn.exec_driver_sql("START TRANSACTION READ ONLY")
            stopper = _canceller(engine, dialect, conn)
            # Servers time out by themselves; the watcher is the backstop (and SQLite's only timeout, for
            # an EXPLAIN QUERY PLAN that only plans: never the long part).
            deadline = started + timeout_s + EXPLAIN_CANCEL_GRACE_S
            watcher = threading.Thread(
                target=watch_explain,
                args=(stopper, cancel, done, deadline),
                name="perftop-explain-watch",
                daemon=True,
            )
            watcher.start()
            if parameters is None:  # as the app ran it: no parameters, so no placeholder parsing either
                result = conn.execution_options(no_parameters=True).exec_driver_sql(sql)
            else:
                result = conn.exec_driver_sql(sql, parameters)
            rows = result.fetchall()
            keys = list(result.keys())
        except Exception as exc:
            elapsed = time.monotonic() - started
            database = "mariadb" if mariadb else dialect  # SQLAlchemy names MariaDB's dialect mysql
            raise explain_failure(exc, database, analyzed, cancel, elapsed, timeout_s, keep) from None
        finally:
            done.set()
            if watcher is not None:
                # A cancel in flight finishes before the connection goes back to the pool (so it cannot
                # reach an app's statement); a side connection that hangs is left to its daemon thread.
                watcher.join(EXPLAIN_CANCEL_JOIN_S)
            try:
                if mysql and analyzed:
                    conn.exec_driver_sql("ROLLBACK")  # ends the explicit transaction on any engine
                conn.rollback()
            except Exception as exc:
                log_once("sql-explain-rollback", "could not roll back after EXPLAIN", exc=exc)
    if cancel.is_set():
        raise ExplainError("EXPLAIN cancelled: the viewer that asked for it went away")
    return _explain.plan_from_rows(dialect, keys, [tuple(r) for r in rows]), analyzed


def explain_failure(
    exc: Exception, dialect: str, analyzed: bool, cancel: Any, elapsed: float, timeout_s: float, keep: bool
) -> Exception:
    """The one-line error for an EXPLAIN that failed, its values redacted unless the app opted in."""
    if cancel.is_set():
        return ExplainError("EXPLAIN cancelled: the viewer that asked for it went away")
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    args: tuple[Any, ...] = getattr(orig, "args", ())
    if code is None and args and isinstance(args[0], int):
        code = args[0]
    if code in _READ_ONLY_REFUSALS:
        what = "ANALYZE" if analyzed else "EXPLAIN"
        return ExplainError(
            f"{what} refused: running this statement would write ({dialect} refused it in a read-only "
            "transaction)" + ("; plain EXPLAIN shows its plan" if analyzed else "")
        )
    if elapsed >= timeout_s:
        return ExplainError(f"EXPLAIN stopped: it ran longer than its {timeout_s:g} s timeout on {dialect}")
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        message = args[1]
    else:
        message = str(orig)
    message = message.splitlines()[0] if message else type(orig).__name__
    if not keep:
        message = _fingerprint.redact_error(message)
    return _EngineFailed(f"EXPLAIN failed on {dialect}: {type(orig).__name__}: {message}"[:ERROR_TEXT_MAX])


def _canceller(engine: Any, dialect: str, conn: Any) -> Callable[[], None] | None:
    """A function that cancels what `conn` is running, from another thread, or None if none is known.

    SQLite: `interrupt()` on its connection. PostgreSQL: `pg_cancel_backend` of its backend, MySQL and
    MariaDB: `KILL QUERY` of its connection id, both sent on a DBAPI connection of their own (made by the
    engine's own connect function, outside the pool, so a full pool cannot delay it).
    """
    dbapi_conn = conn.connection.dbapi_connection
    if dialect == "sqlite":
        interrupt = getattr(dbapi_conn, "interrupt", None)
        return interrupt if callable(interrupt) else None
    if dialect == "postgresql":
        backend = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        command = f"SELECT pg_cancel_backend({int(backend)})"
    elif dialect in ("mysql", "mariadb"):
        backend = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
        command = f"KILL QUERY {int(backend)}"
    else:
        return None

    def stop() -> None:
        creator = getattr(engine.pool, "_creator", None)
        if callable(creator):
            side = creator()
        else:
            cargs, cparams = engine.dialect.create_connect_args(engine.url)
            side = engine.dialect.connect(*cargs, **cparams)
        try:
            cursor = side.cursor()
            cursor.execute(command)
            with contextlib.suppress(Exception):
                cursor.fetchall()
            with contextlib.suppress(Exception):
                side.commit()
        finally:
            side.close()

    return stop


def watch_explain(
    stop: Callable[[], None] | None, cancel: Any, done: threading.Event, deadline: float
) -> None:
    """Until `done`: once the viewer is gone (`cancel`) or `deadline` passed, cancel the statement, and
    again every half second (a cancel that arrived before the statement started cancels nothing)."""
    while not done.wait(EXPLAIN_CANCEL_POLL_S):
        if stop is None or not (cancel.is_set() or time.monotonic() >= deadline):
            continue
        try:
            stop()
        except Exception as exc:
            log_once("sql-explain-cancel", "could not cancel a running EXPLAIN", exc=exc)
        done.wait(0.5)


def _catalog(engine: Any, tables: list[str]) -> dict[str, dict[str, Any]] | None:
    """Columns and indexes (column lists, primary key included) of the tables a plan mentions."""
    if not tables:
        return {}
    try:
        from sqlalchemy import inspect

        inspector = inspect(engine)
        out: dict[str, dict[str, Any]] = {}
        for table in tables:
            try:
                columns = [c["name"] for c in inspector.get_columns(table)]
            except Exception:
                continue  # not a table the inspector knows (a view, another schema): no validation
            indexes = [list(ix["column_names"]) for ix in inspector.get_indexes(table)]
            pk = inspector.get_pk_constraint(table).get("constrained_columns") or []
            if pk:
                indexes.append(list(pk))
            out[table] = {"columns": columns, "indexes": [[c for c in ix if c] for ix in indexes]}
        return out
    except Exception as exc:
        log_once("sql-catalog", "could not read the table catalog for EXPLAIN advice", exc=exc)
        return None
