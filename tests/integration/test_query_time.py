"""A query's time covers its rows: from the start of execution until its result is fully fetched or closed.

Against a real app process (tests/targets/qtime_app.py) that times every execution itself, from just
before `execute()` to just after the step that finishes the result: the oracle. perftop's interval is
inside the app's, so a recorded time is at most the app's, and it must be at least 0.8 of it when the
work is the scan (SQLite fetching, server-side cursors), where timing `execute()` alone records ~0.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.helpers import run_perftop, wait_for
from tests.targets.sql_client import PG_URL, AppError, SqlApp, database_url, new_suffix

QAPP = Path(__file__).resolve().parents[1] / "targets" / "qtime_app.py"
SLOW_MS = 5.0
NESTED_SLACK_MS = 0.05
"""perftop's interval lies inside the app's; this only absorbs the two clocks' rounding."""


@contextlib.contextmanager
def running(kind: str, tmp_path: Path, rows: int = 300_000, suffix: str = "") -> Iterator[SqlApp]:
    url = database_url(kind, tmp_path)
    options = ("--slow-ms", str(SLOW_MS), "--rows", str(rows))
    app = SqlApp(url, suffix or new_suffix(), *options, script=QAPP)
    try:
        yield app
    finally:
        with contextlib.suppress(AssertionError, AppError):
            app.call("teardown")
        app.close()


def _query(stats: dict[str, Any], alias: str) -> dict[str, Any]:
    rows = [q for q in stats["queries"] if f"AS {alias}," in q["fingerprint"]]
    assert len(rows) == 1, [q["fingerprint"] for q in stats["queries"]]
    return rows[0]


def _slow(stats: dict[str, Any], fingerprint: str) -> list[float]:
    """Durations of the slow-list entries of a fingerprint, oldest first."""
    return [s["duration_ms"] for s in reversed(stats["slow_queries"]) if s["fingerprint"] == fingerprint]


def _assert_each_covered(stats: dict[str, Any], fingerprint: str, app_ms: list[float]) -> None:
    """Every execution is in the slow list, inside the app's interval of it, and the median recorded
    share of the app's time is at least 0.8 (the median: a loaded machine may preempt the app outside
    perftop's interval, e.g. while it builds Row objects after the last fetch)."""
    slow = _slow(stats, fingerprint)
    assert len(slow) == len(app_ms), (slow, app_ms)
    for recorded, measured in zip(slow, app_ms, strict=True):
        assert recorded <= measured + NESTED_SLACK_MS, (recorded, measured)
    assert statistics.median(r / m for r, m in zip(slow, app_ms, strict=True)) >= 0.8, (slow, app_ms)


@pytest.mark.parametrize("mode", ["all", "iter", "fetchmany"])
def test_sqlite_full_scan_is_timed_with_its_fetch_and_lands_in_the_slow_list(
    mode: str, tmp_path: Path
) -> None:
    with running("sqlite", tmp_path) as app:
        app_ms = app.call("scan", mode=mode, times=5)
        stats = app.stats()

    query = _query(stats, f"{mode}_id")
    assert query["count"] == 5 and query["errors"] == 0
    assert min(app_ms) > SLOW_MS  # the scan is slow by the app's clock (else this test proves nothing)
    _assert_each_covered(stats, query["fingerprint"], app_ms)
    assert (query["rows"], query["rows_counted"]) == (0, 0)  # SQLite does not say how many it returned


def test_a_scan_failing_while_fetched_is_an_error_timed_until_it_failed(tmp_path: Path) -> None:
    with running("sqlite", tmp_path) as app:
        app_ms = app.call("scan", mode="fails", times=3)
        stats = app.stats()

    query = _query(stats, "fails_id")
    assert (query["count"], query["errors"]) == (3, 3)
    _assert_each_covered(stats, query["fingerprint"], app_ms)
    for entry in stats["slow_queries"]:
        if entry["fingerprint"] == query["fingerprint"]:
            assert entry["error"] == "OperationalError: integer overflow"


@pytest.mark.parametrize("mode", ["close", "dropped", "checkin"])
def test_a_result_left_open_ends_when_closed_dropped_or_its_connection_returns(
    mode: str, tmp_path: Path
) -> None:
    """One row fetched, then the app keeps the result 60 ms before finishing it in `mode`'s way; with
    `checkin` it keeps the result 60 ms more after returning the connection, which must not count."""
    with running("sqlite", tmp_path, rows=20_000) as app:
        app_ms = app.call("scan", mode=mode, times=3, hold_ms=60)
        stats = app.stats()

    query = _query(stats, f"{mode}_id")
    assert query["count"] == 3
    assert min(app_ms) >= 60
    _assert_each_covered(stats, query["fingerprint"], app_ms)


def test_results_never_fetched_and_first_rows_still_count(tmp_path: Path) -> None:
    with running("sqlite", tmp_path, rows=20_000) as app:
        unfetched_ms = app.call("scan", mode="unfetched", times=5)
        first_ms = app.call("scan", mode="first", times=5)
        stats = app.stats()

    for alias, app_ms in (("unfetched_id", unfetched_ms), ("first_id", first_ms)):
        query = _query(stats, alias)
        assert query["count"] == 5 and query["errors"] == 0
        assert 0 < query["total_ms"] <= sum(app_ms) + NESTED_SLACK_MS


def test_insertmanyvalues_batches_are_timed_once_each(tmp_path: Path) -> None:
    """2,500 rows with RETURNING go as batches of 1,000 on one execution context: each batch ends
    when the next starts, so together they fit in the app's time of the whole call."""
    with running("sqlite", tmp_path, rows=100) as app:
        app_ms = app.call("insert_returning", rows=2500)
        stats = app.stats()

    batches = [
        q
        for q in stats["queries"]
        if q["fingerprint"].startswith("INSERT INTO big_") and "RETURNING" in q["fingerprint"]
    ]
    assert sum(q["count"] for q in batches) == 3
    assert 0 < sum(q["total_ms"] for q in batches) <= app_ms + NESTED_SLACK_MS


def test_no_reference_cycle_and_no_leak(tmp_path: Path) -> None:
    with running("sqlite", tmp_path, rows=100) as app:
        found = app.call("leak_check", n=300)
        stats = app.stats()

    bare, instrumented = found["bare"], found["instrumented"]
    assert instrumented["contexts"] == bare["contexts"] == 300 * 6
    # Without the cycle collector every execution context is freed, as with no hook at all...
    assert instrumented["contexts_alive"] == bare["contexts_alive"] == 0
    # ...and the collector finds no more garbage cycles than on the bare engine.
    assert instrumented["cycles"] <= bare["cycles"]
    assert found["open_left"] == 0
    # 1,800 more executions must not grow memory (a leak of one small object each is over 100 kB).
    assert found["growth_bytes"] < 64 * 1024, found["growth_bytes"]
    assert _query(stats, "leak_id")["count"] == 300 * 6 * 3 + 20 * 6  # every execution counted once


@pytest.mark.db
@pytest.mark.parametrize("mode", ["all", "stream", "yield_per"])
def test_postgresql_server_side_cursors_are_timed_with_their_fetch(mode: str, tmp_path: Path) -> None:
    with running("postgresql", tmp_path) as app:
        app_ms = app.call("scan", mode=mode, times=3)
        stats = app.stats()

    query = _query(stats, f"{mode}_id")
    assert query["count"] == 3 and query["errors"] == 0
    _assert_each_covered(stats, query["fingerprint"], app_ms)


@pytest.mark.db
def test_postgresql_async_stream_is_timed_with_its_fetch(tmp_path: Path) -> None:
    """An AsyncEngine's `stream()` fetches through the same SQLAlchemy result, awaited row by row."""
    with running("postgresql", tmp_path, rows=5000) as app:
        app_ms = app.call("async_stream", times=3, limit=5000)
        stats = app.stats()

    query = _query(stats, "async_id")
    assert query["count"] == 3 and query["errors"] == 0
    _assert_each_covered(stats, query["fingerprint"], app_ms)


@pytest.mark.db
@pytest.mark.parametrize("mode", ["all", "stream"])
def test_mariadb_is_timed_with_its_fetch(mode: str, tmp_path: Path) -> None:
    with running("mariadb", tmp_path) as app:
        app_ms = app.call("scan", mode=mode, times=3)
        stats = app.stats()

    query = _query(stats, f"{mode}_id")
    assert query["count"] == 3 and query["errors"] == 0
    _assert_each_covered(stats, query["fingerprint"], app_ms)
    if mode == "stream":  # an unbuffered cursor does not know its row count (PyMySQL says 2**64 - 1)
        assert (query["rows"], query["rows_counted"]) == (0, 0)


TARGETS = Path(__file__).resolve().parent.parent / "targets"


def _pg_stat_statements() -> Any:
    """An engine on the test database with pg_stat_statements usable, or a skip saying why not."""
    import sqlalchemy as sa

    engine = sa.create_engine(database_url("postgresql", Path()), poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        preloaded = str(conn.exec_driver_sql("SHOW shared_preload_libraries").scalar())
    if "pg_stat_statements" not in preloaded:
        engine.dispose()
        pytest.skip(f"pg_stat_statements is not in shared_preload_libraries ({preloaded!r})")
    with contextlib.suppress(sa.exc.IntegrityError, sa.exc.ProgrammingError), engine.begin() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")  # races another test
    return engine


@pytest.mark.db
def test_postgresql_counts_match_pg_stat_statements_and_app_time_includes_server_time(tmp_path: Path) -> None:
    """The server's own statistics for the same statements: the same number of calls, and less time
    (its execution only; perftop's is the app's: round trip, driver and fetching included)."""
    engine = _pg_stat_statements()
    suffix = new_suffix()
    try:
        with running("postgresql", tmp_path, rows=50_000, suffix=suffix) as app:
            lookup_ms = app.call("pk_lookup", times=200)
            scan_ms = app.call("scan", mode="all", times=3)
            stats = app.stats()
        with engine.connect() as conn:
            server = {
                alias: conn.exec_driver_sql(
                    "SELECT sum(calls), sum(total_exec_time) FROM pg_stat_statements"
                    " WHERE query LIKE %(alias)s AND query LIKE %(table)s",
                    {"alias": f"%AS {alias},%", "table": f"%big_{suffix} %"},
                ).one()
                for alias in ("pk_id", "all_id")
            }
    finally:
        engine.dispose()

    for alias, app_ms in (("pk_id", lookup_ms), ("all_id", scan_ms)):
        query = _query(stats, alias)
        calls, server_ms = server[alias]
        assert query["count"] == calls == len(app_ms)
        assert server_ms <= query["total_ms"] <= sum(app_ms) + NESTED_SLACK_MS * len(app_ms)


def test_queries_show_the_databases_own_time_beside_the_apps(tmp_path: Path) -> None:
    """Where pg_stat_statements is readable, each PostgreSQL fingerprint carries the database's own mean
    execution time (matched through perftop's normalizer), equal to what the test reads from
    pg_stat_statements itself, and below the app's time, which adds the round trip and the driver."""
    stat_engine = _pg_stat_statements()
    table = f"pt_srv_{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "PERFTOP_SOCKET_DIR": str(tmp_path / "sockets")}
    proc = subprocess.Popen(
        [sys.executable, str(TARGETS / "pg_server_time.py"), PG_URL, table],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "done"
        fingerprint = f"SELECT name FROM {table} WHERE id = ?"

        def measured() -> dict[str, Any]:
            """The fingerprint's row once it carries the server's time, else an empty dict."""
            out = run_perftop("snapshot", "--pid", str(proc.pid), "--json", env=env, timeout=60)
            rows = {q["fingerprint"]: q for q in json.loads(out.stdout)["queries"]}
            row: dict[str, Any] = rows.get(fingerprint) or {}
            return row if row.get("server_mean_ms") is not None else {}

        row = wait_for(measured, 60, f"the server time of {fingerprint!r} in a snapshot", interval=1)
        with stat_engine.connect() as conn:
            calls, total = conn.exec_driver_sql(
                "SELECT sum(calls), sum(total_exec_time) FROM pg_stat_statements "
                f"WHERE query LIKE 'SELECT name FROM {table} WHERE id = %%'"
            ).one()
        assert calls >= 200
        assert row["server_mean_ms"] == pytest.approx(float(total) / float(calls), rel=0.01)
        assert row["server_mean_ms"] < row["mean_ms"]
    finally:
        proc.kill()
        proc.wait(10)
        with sa.create_engine(PG_URL).begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
