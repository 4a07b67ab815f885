"""Benchmark: what perftop's SQLAlchemy hook costs per query, and what bounds its memory.

Run by hand from the repository root: `.venv/bin/python tests/perf/bench_sql_hook.py`.

Timing: in-memory SQLite `SELECT 1` through SQLAlchemy on one held connection, in one run, for
  bare              no listener at all, and SQLAlchemy's own `CursorResult._soft_close` (perftop wraps
                    it once per process to end a query when its result is fetched or closed; the
                    original is put back while this variant runs),
  bare, hook loaded no listener, with that wrapper in place: what an engine perftop does not record pays,
  empty pair        empty before/after_cursor_execute listeners (what any event-based hook starts from),
  recording pair    a minimal before/after pair that times the statement and appends it to a list,
  perftop           `perftop.agent.sqlalchemy.instrument(engine)` (its aggregation thread running),
each in microseconds per query, the median of several interleaved repeats, by default of CPU time
(`time.process_time_ns`: this process's CPU, perftop's aggregation thread included), which other
processes on a loaded machine do not inflate as they do wall time (`--clock wall`). The goal is perftop's
overhead over bare at most 10 us. `SELECT 1` returns a row, so it takes perftop's full path (the
execution stays open until `.all()` has fetched its row). The same is then measured with a pool
checkout and checkin around every query, since perftop also listens to those events.

Memory: 10,000 distinct statements through a hook capped at 2,000 fingerprints: the cap must hold, the
rest must be counted as dropped, and the traced memory growth is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine.cursor import CursorResult

from perftop.agent import fingerprint
from perftop.agent import sqlalchemy as hook


def _bare(engine: sa.Engine) -> None:
    return None


def _empty_pair(engine: sa.Engine) -> None:
    def before(*args: Any) -> None:
        return None

    def after(*args: Any) -> None:
        return None

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)


def _recording_pair(engine: sa.Engine) -> None:
    records: list[tuple[str, int]] = []
    clock = time.perf_counter_ns

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        context._bench_t0 = clock()

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        records.append((statement, clock() - context._bench_t0))
        if len(records) > 100_000:
            records.clear()

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)


def _perftop(engine: sa.Engine) -> None:
    hook.instrument(engine)


VARIANTS: list[tuple[str, Callable[[sa.Engine], None]]] = [
    ("bare", _bare),
    ("bare, hook loaded", _bare),
    ("empty pair", _empty_pair),
    ("recording pair", _recording_pair),
    ("perftop", _perftop),
]


@contextlib.contextmanager
def _without_result_hook() -> Iterator[None]:
    """SQLAlchemy's own `CursorResult._soft_close` for the duration (perftop's wrapper keeps it in
    `__wrapped__`)."""
    wrapper = CursorResult.__dict__["_soft_close"]
    CursorResult._soft_close = getattr(wrapper, "__wrapped__", wrapper)  # type: ignore[method-assign]
    try:
        yield
    finally:
        CursorResult._soft_close = wrapper  # type: ignore[method-assign]


def _held_connection(engine: sa.Engine, stmt: Any, n: int) -> None:
    with engine.connect() as conn:
        for _ in range(n):
            conn.execute(stmt).all()


def _connection_per_query(engine: sa.Engine, stmt: Any, n: int) -> None:
    for _ in range(n):
        with engine.connect() as conn:
            conn.execute(stmt).all()


CLOCKS: dict[str, Callable[[], int]] = {"cpu": time.process_time_ns, "wall": time.perf_counter_ns}


def time_variants(
    n: int, repeats: int, per_query_connection: bool = False, clock: Callable[[], int] = time.process_time_ns
) -> dict[str, float]:
    """Median microseconds per `SELECT 1` for each variant, repeats interleaved to share any drift.

    By default one connection is held for all queries (the execution path only); with
    `per_query_connection` each query also checks a connection out of the pool and back in."""
    stmt = sa.text("SELECT 1")
    run = _connection_per_query if per_query_connection else _held_connection
    engines: list[tuple[str, sa.Engine]] = []
    for name, setup in VARIANTS:
        # A real pool even in memory: every connection of a StaticPool shares the one database.
        engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)
        setup(engine)
        engines.append((name, engine))
    results: dict[str, list[float]] = {name: [] for name, _ in VARIANTS}
    for _, engine in engines:
        run(engine, stmt, 2000)
    for _ in range(repeats):
        for name, engine in engines:
            gc.collect()
            with _without_result_hook() if name == "bare" else contextlib.nullcontext():
                t0 = clock()
                run(engine, stmt, n)
                results[name].append((clock() - t0) / n / 1000)
    for _, engine in engines:
        engine.dispose()
    return {name: statistics.median(values) for name, values in results.items()}


def memory_bound(distinct: int, cap: int) -> dict[str, Any]:
    """Run `distinct` different statements through a hook capped at `cap` fingerprints."""
    engine = sa.create_engine("sqlite://")
    hook.instrument(engine, max_fingerprints=cap)
    before = hook.query_stats(None)
    known_before = len(before["queries"])
    dropped_before = before["overflow"]["fingerprints_dropped"]
    gc.collect()
    tracemalloc.start()
    start_bytes = tracemalloc.get_traced_memory()[0]
    with engine.connect() as conn:
        for i in range(distinct):
            conn.exec_driver_sql(f"SELECT 1 AS c{i}").all()
    stats = hook.query_stats(None)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - start_bytes
    tracemalloc.stop()
    return {
        "distinct_statements": distinct,
        "cap": cap,
        "fingerprints_kept": len(stats["queries"]),
        "fingerprints_kept_before": known_before,
        "fingerprints_dropped": stats["overflow"]["fingerprints_dropped"] - dropped_before,
        "executions_dropped": stats["overflow"]["executions_dropped"],
        "fingerprint_cache_entries": len(fingerprint.cache),
        "fingerprint_cache_cap": fingerprint.CACHE_MAX,
        "traced_growth_bytes": grown,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="queries per measurement")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="what is timed (default cpu)")
    args = parser.parse_args()
    out = sys.stdout.write
    out(f"SQLAlchemy {sa.__version__}, Python {sys.version.split()[0]}, in-memory SQLite SELECT 1")
    out(f", {args.clock} time\n")
    clock = CLOCKS[args.clock]
    medians = time_variants(args.n, args.repeats, clock=clock)
    bare = medians["bare"]
    for name, _ in VARIANTS:
        out(f"  {name:<17} {medians[name]:7.2f} us/query   (+{medians[name] - bare:5.2f} us over bare)\n")
    overhead = medians["perftop"] - bare
    empty = medians["empty pair"] - bare
    verdict = "OK" if overhead <= 10.0 else "OVER BUDGET"
    out(f"  perftop overhead {overhead:.2f} us (goal <= 10 us; empty pair costs {empty:.2f} us): {verdict}\n")
    per_query = time_variants(args.n // 2, args.repeats, per_query_connection=True, clock=clock)
    out("with a pool checkout/checkin per query (perftop also listens to those, for N+1 and the pool):\n")
    for name, _ in VARIANTS:
        extra = per_query[name] - per_query["bare"]
        out(f"  {name:<17} {per_query[name]:7.2f} us/query   (+{extra:5.2f} us over bare)\n")
    mem = memory_bound(10_000, 2_000)
    out("memory bound:\n")
    for key, value in mem.items():
        out(f"  {key:<26} {value}\n")
    held = mem["fingerprints_kept"] <= mem["cap"]
    counted = mem["fingerprints_dropped"] >= mem["distinct_statements"] - mem["cap"]
    out(f"  cap holds: {held}; overflow counted: {counted}\n")


if __name__ == "__main__":
    main()
