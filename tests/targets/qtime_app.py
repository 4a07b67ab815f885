"""An instrumented app for the query-time tests: scans a big table, fetching its rows in various ways,
and times each execution itself (its oracle) from just before `execute()` to just after the step that
finishes the result (the last fetch, `close()`, the connection's return, or dropping the result).

Usage: python tests/targets/qtime_app.py URL SUFFIX [--slow-ms MS] [--rows N]

Protocol (tests/targets/json_lines.py): one JSON object per line on stdin, one reply per line on stdout:
  {"cmd": NAME, ...args}  ->  {"ok": true, "result": ...} or {"ok": false, "error": MSG, "type": NAME,
                                                              "value_error": bool}
Commands: scan, async_stream, insert_returning, pk_lookup, leak_check, stats, teardown, exit.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc
import weakref
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from perftop.agent import sqlalchemy as hook
from tests.targets.json_lines import serve

FILL = {
    "sqlite": (
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < {n}) "
        "INSERT INTO {t} (id, a, b) SELECT i, i % 97, hex(randomblob(16)) FROM r"
    ),
    "postgresql": (
        "INSERT INTO {t} (id, a, b) SELECT g, mod(g, 97), md5(g::text) FROM generate_series(1, {n}) g"
    ),
    "mysql": "INSERT INTO {t} (id, a, b) SELECT seq, mod(seq, 97), md5(seq) FROM seq_1_to_{n}",
}


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        import sqlalchemy as sa

        self.sa = sa
        self.engine = sa.create_engine(args.url, pool_size=2)
        hook.instrument(self.engine, slow_ms=args.slow_ms)
        self.slow_ms = args.slow_ms
        self.bare = sa.create_engine(args.url, pool_size=2)  # never instrumented: the leak oracle
        self.table = f"big_{args.suffix}"
        self.dialect = self.engine.dialect.name
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self.table}")
            conn.exec_driver_sql(
                f"CREATE TABLE {self.table} (id INTEGER PRIMARY KEY, a INTEGER, b VARCHAR(40))"
            )
            conn.exec_driver_sql(FILL[self.dialect].format(t=self.table, n=args.rows))
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"ANALYZE {self.table}")

    def statement(self, mode: str) -> str:
        """A full scan of the table (no index on `a`); the alias gives each mode its own fingerprint.
        With mode `fails`, the scan fails at the table's last row (SQLite: integer overflow)."""
        if mode == "fails":
            last = f"(SELECT max(id) FROM {self.table})"
            return (
                f"SELECT abs(CASE WHEN id = {last} THEN -9223372036854775807 - 1 ELSE id END) AS fails_id,"
                f" a, b FROM {self.table} WHERE a = 5 OR id = {last}"
            )
        return f"SELECT id AS {mode}_id, a, b FROM {self.table} WHERE a = 5"

    # -- commands -------------------------------------------------------------------------------------

    def scan(self, mode: str, times: int = 3, hold_ms: float = 0.0) -> list[float]:
        """Run the scan `times` times, finishing each result as `mode` says; the app's own milliseconds
        from just before `execute()` to just after the finishing step, per execution."""
        return [self._scan_once(mode, hold_ms) for _ in range(times)]

    def _scan_once(self, mode: str, hold_ms: float) -> float:
        sql = self.sa.text(self.statement(mode))
        options: dict[str, Any] = {
            "stream": {"stream_results": True, "max_row_buffer": 500},
            "yield_per": {"yield_per": 500},
        }.get(mode, {})
        hold = hold_ms / 1000
        clock = time.perf_counter_ns
        conn = self.engine.connect()
        try:
            if mode == "unfetched":
                t0 = clock()
                conn.execute(sql)  # the result is dropped here, never fetched nor closed
                return (clock() - t0) / 1e6
            t0 = clock()
            result = conn.execution_options(**options).execute(sql)
            if mode in ("all", "stream"):
                result.all()
            elif mode == "fails":
                try:
                    result.all()
                except self.sa.exc.DBAPIError:
                    return (clock() - t0) / 1e6
                raise AssertionError("the scan did not fail")
            elif mode == "iter" or mode == "yield_per":
                for _ in result:
                    pass
            elif mode == "fetchmany":
                while result.fetchmany(100):
                    pass
            elif mode == "first":
                result.first()
            elif mode == "close":  # one row, then the app keeps the result open a while and closes it
                result.fetchone()
                time.sleep(hold)
                result.close()
            elif mode == "dropped":  # one row, kept a while, then dropped: ends when it is freed
                result.fetchone()
                time.sleep(hold)
                del result
            elif mode == "checkin":  # one row, kept a while, then the connection goes back to the pool
                result.fetchone()
                time.sleep(hold)
                conn.close()
                t1 = clock()
                time.sleep(hold)  # the result outlives the checkin: this must not be counted
                del result
                return (t1 - t0) / 1e6
            else:
                raise ValueError(f"unknown mode {mode!r}")
            return (clock() - t0) / 1e6
        finally:
            conn.close()

    def async_stream(self, times: int = 3, limit: int = 5000) -> list[float]:
        """PostgreSQL through an AsyncEngine (psycopg's async driver): `conn.stream()` (a server-side
        cursor), iterated to the end; the app's own milliseconds per execution."""
        import asyncio

        from sqlalchemy.ext.asyncio import create_async_engine

        url = self.engine.url.set(drivername="postgresql+psycopg_async")
        sql = self.sa.text(f"SELECT id AS async_id, a, b FROM {self.table} WHERE id <= :n")

        async def run() -> list[float]:
            engine = create_async_engine(url)
            hook.instrument(engine, slow_ms=self.slow_ms)
            out: list[float] = []
            try:
                for _ in range(times):
                    async with engine.connect() as conn:
                        t0 = time.perf_counter_ns()
                        result = await conn.stream(sql, {"n": limit})
                        async for _row in result:
                            pass
                        out.append((time.perf_counter_ns() - t0) / 1e6)
            finally:
                await engine.dispose()
            return out

        return asyncio.run(run())

    def insert_returning(self, rows: int = 2500) -> float:
        """One executemany INSERT ... RETURNING, which SQLAlchemy sends as several insertmanyvalues
        batches on one execution context; the app's own milliseconds for it."""
        sa = self.sa
        table = sa.Table(self.table, sa.MetaData(), autoload_with=self.engine)
        first = 10_000_000
        values = [{"id": first + i, "a": -1, "b": "inserted"} for i in range(rows)]
        with self.engine.begin() as conn:
            t0 = time.perf_counter_ns()
            ids = conn.execute(table.insert().returning(table.c.id), values).all()
            elapsed = (time.perf_counter_ns() - t0) / 1e6
            conn.execute(table.delete().where(table.c.a == -1))
        assert len(ids) == rows
        return elapsed

    def pk_lookup(self, times: int = 200) -> list[float]:
        """A primary-key lookup, as the app times it (execute + fetch)."""
        sql = self.sa.text(f"SELECT id AS pk_id, a, b FROM {self.table} WHERE id = :id")
        out: list[float] = []
        with self.engine.connect() as conn:
            for i in range(times):
                t0 = time.perf_counter_ns()
                conn.execute(sql, {"id": i + 1}).all()
                out.append((time.perf_counter_ns() - t0) / 1e6)
        return out

    def leak_check(self, n: int = 300) -> dict[str, Any]:
        """Every way of finishing a result, `n` times each, on the instrumented engine and on a bare one:
        what `gc.collect()` finds after each (cycles) with automatic collection off, whether execution
        contexts are freed without it, the traced memory growth between two equal rounds, and the hook's
        table of open results afterwards."""
        modes = ["all", "first", "close", "dropped", "unfetched", "checkin"]
        out: dict[str, Any] = {}
        for name, engine in (("bare", self.bare), ("instrumented", self.engine)):
            gc.collect()
            gc.disable()
            try:
                self._round(engine, modes, 20)  # warm caches (compiled statements, pool) first
                gc.collect()
                contexts: list[weakref.ref[Any]] = []
                self._round(engine, modes, n, contexts)
                alive = sum(ref() is not None for ref in contexts)
                cycles = gc.collect()
            finally:
                gc.enable()
            out[name] = {"cycles": cycles, "contexts_alive": alive, "contexts": len(contexts)}
        hook.query_stats(None)
        tracemalloc.start()
        self._round(self.engine, modes, n)
        hook.query_stats(None)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        self._round(self.engine, modes, n)
        hook.query_stats(None)
        gc.collect()
        out["growth_bytes"] = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        out["open_left"] = sum(len(opens) for opens in hook._s.opened.values())
        return out

    def _round(
        self, engine: Any, modes: list[str], n: int, contexts: list[weakref.ref[Any]] | None = None
    ) -> None:
        sql = self.sa.text(f"SELECT id AS leak_id, a FROM {self.table} WHERE id <= 3")
        for _ in range(n):
            for mode in modes:
                conn = engine.connect()
                result = conn.execute(sql)
                if contexts is not None:
                    contexts.append(weakref.ref(result.context))
                if mode == "all":
                    result.all()
                elif mode == "first":
                    result.first()
                elif mode == "close":
                    result.fetchone()
                    result.close()
                elif mode == "dropped":
                    result.fetchone()
                elif mode == "checkin":
                    result.fetchone()
                    conn.close()
                del result
                conn.close()

    def stats(self, window_s: float | None = None, now: float | None = None) -> dict[str, Any]:
        return hook.query_stats(window_s, now)

    def teardown(self) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self.table}")
        self.engine.dispose()
        self.bare.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("suffix")
    parser.add_argument("--slow-ms", type=float, default=5.0)
    parser.add_argument("--rows", type=int, default=300_000)
    args = parser.parse_args()
    app = App(args)
    commands: dict[str, Callable[..., Any]] = {
        name: getattr(app, name)
        for name in (
            "scan",
            "async_stream",
            "insert_returning",
            "pk_lookup",
            "leak_check",
            "stats",
            "teardown",
        )
    }
    serve(commands, dialect=app.dialect)


if __name__ == "__main__":
    main()
