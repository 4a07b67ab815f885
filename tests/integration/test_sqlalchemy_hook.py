"""perftop's SQLAlchemy hook inside a real instrumented app process, against SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from perftop.wire.sketch import Sketch
from tests.targets.sql_app import SLOW_SQL
from tests.targets.sql_client import APP, database_url, direct_engine, marker_line, running_app

KINDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.db)]


def _by_fingerprint(stats: dict[str, Any], *needles: str) -> dict[str, Any]:
    rows = [q for q in stats["queries"] if all(n in q["fingerprint"] for n in needles)]
    assert len(rows) == 1, [q["fingerprint"] for q in stats["queries"]]
    return rows[0]


@pytest.mark.parametrize(
    ("kind", "order"),
    [
        ("sqlite", "global-first"),
        ("sqlite", "--engine-first"),
        pytest.param("postgresql", "global-first", marks=pytest.mark.db),
    ],
)
def test_slowest_fingerprint_is_the_slow_workload(kind: str, order: str, tmp_path: Path) -> None:
    options = [order] if order.startswith("--") else []
    with running_app(database_url(kind, tmp_path), *options) as (app, suffix):
        app.call("workload", fast=100, slow=3)
        stats = app.stats()

    top = stats["queries"][0]
    assert top["fingerprint"].startswith("WITH RECURSIVE c(x) AS (SELECT ? UNION ALL")
    assert top["count"] == 3 and top["errors"] == 0
    assert top["dialect"] == kind
    # Each execution counted once, although the app instrumented both every engine and its engine.
    fast = _by_fingerprint(stats, f"FROM items_{suffix} WHERE items_{suffix}.id = ?")
    assert fast["count"] == 100
    assert fast["n_plus_one"] is False  # one connection per query
    # SQLite's SELECT rowcount is -1: no rows known, and the hook says so rather than counting 0.
    assert (fast["rows"], fast["rows_counted"]) == ((100, 100) if kind == "postgresql" else (0, 0))
    insert = _by_fingerprint(stats, f"INSERT INTO items_{suffix}")
    assert insert["rows"] == 2000 and insert["rows_counted"] == insert["count"]  # DML: rows affected
    assert fast["p50_ms"] <= fast["p95_ms"] <= fast["p99_ms"] <= fast["max_ms"]
    sketch = Sketch.from_dict(fast["sketch"])
    assert sketch.count == 100 and sketch.sum / 1e6 == pytest.approx(fast["total_ms"])
    assert sum(q["share_percent"] for q in stats["queries"]) == pytest.approx(100.0)

    slow = [s for s in stats["slow_queries"] if s["fingerprint"] == top["fingerprint"]]
    assert len(slow) == 3
    for entry in slow:
        assert entry["duration_ms"] >= stats["slow_ms"] == 20.0
        assert entry["error"] is None
        assert entry["call_site"] == {
            "file": str(APP),
            "line": marker_line("SLOW HERE"),
            "function": "App.workload",
        }
    assert [s["at"] for s in stats["slow_queries"]] == sorted(
        (s["at"] for s in stats["slow_queries"]), reverse=True
    )
    assert SLOW_SQL not in json.dumps(stats)  # the raw statement is not reported, only its fingerprint


@pytest.mark.parametrize("kind", KINDS)
def test_n_plus_one_flagged_at_its_call_site(kind: str, tmp_path: Path) -> None:
    with running_app(database_url(kind, tmp_path)) as (app, suffix):
        app.call("n_plus_one", users=15, few=3)
        stats = app.stats()

    lazy = _by_fingerprint(stats, f"FROM orders_{suffix} WHERE ?", f"= orders_{suffix}.user_id")
    assert lazy["count"] == 15
    assert lazy["n_plus_one"] is True
    assert lazy["n_plus_one_site"] == {
        "file": str(APP),
        "line": marker_line("N+1 HERE"),
        "function": "App.n_plus_one",
    }
    few = _by_fingerprint(stats, f"SELECT orders_{suffix}.amount FROM")
    assert few["count"] == 3 and few["n_plus_one"] is False and few["n_plus_one_site"] is None
    users = _by_fingerprint(stats, f"FROM users_{suffix} ORDER BY")
    assert users["count"] == 1 and users["n_plus_one"] is False


@pytest.mark.parametrize("kind", KINDS)
def test_pool_numbers_match_held_connections(kind: str, tmp_path: Path) -> None:
    url = database_url(kind, tmp_path)
    with running_app(url, "--pool-size", "3", "--max-overflow", "2") as (app, _):
        app.call("hold", n=2)
        pool = app.stats()["pool"]
        assert (pool["size"], pool["checked_out"], pool["overflow"]) == (3, 2, 0)

        app.call("hold", n=3)  # 5 = the pool's 3 + its 2 overflow: the pool is now exhausted
        pool = app.stats()["pool"]
        assert (pool["size"], pool["checked_out"], pool["overflow"]) == (3, 5, 2)

        waited = app.call("contend", hold_ms=300)["waited_ms"]
        pool = app.stats()["pool"]
        assert waited >= 250
        assert pool["wait_max_ms"] == pytest.approx(waited, rel=0.05, abs=5)
        assert pool["checked_out"] == 4  # one held connection went to the waiting thread, and back

        app.call("release")
        pool = app.stats(window_s=10)["pool"]
        assert pool["checked_out"] == 0
        assert pool["checkouts_per_s"] > 0
        assert pool["wait_p99_ms"] is not None and pool["wait_p99_ms"] <= pool["wait_max_ms"]


@pytest.mark.parametrize("kind", KINDS)
def test_failing_statement_counted_and_exception_unchanged(kind: str, tmp_path: Path) -> None:
    import sqlalchemy as sa

    url = database_url(kind, tmp_path)
    with running_app(url) as (app, suffix):
        seen = app.call("fail")
        stats = app.stats()
        # The same statement on an engine perftop never touched (this test process) fails identically.
        with (
            direct_engine(url) as engine,
            pytest.raises(sa.exc.DBAPIError) as raised,
            engine.connect() as conn,
        ):
            conn.execute(sa.text(f"SELECT * FROM missing_items_{suffix}"))

    assert seen["type"] == f"{type(raised.value).__module__}.{type(raised.value).__qualname__}"
    assert seen["message"] == str(raised.value)
    failed = _by_fingerprint(stats, f"missing_items_{suffix}")
    assert (failed["count"], failed["errors"]) == (1, 1)


def test_windows_and_privacy(tmp_path: Path) -> None:
    secret = "secret-value-1234@example.com"
    with running_app(database_url("sqlite", tmp_path)) as (app, suffix):
        app.call("find_by_email", email=secret, times=2)
        recent = app.stats(window_s=10)
        later = app.stats(window_s=10, now=time.time() + 600)
        since_start = app.stats(window_s=None, now=time.time() + 600)

    query = _by_fingerprint(recent, f"WHERE items_{suffix}.email = ?")
    assert query["count"] == 2
    assert later["queries"] == [] and later["slow_queries"] == []
    assert _by_fingerprint(since_start, f"WHERE items_{suffix}.email = ?")["count"] == 2
    for stats in (recent, since_start):
        assert secret not in json.dumps(stats)  # parameter values never leave the app


@pytest.mark.parametrize("kind", KINDS)
def test_no_execution_lost_while_threads_race_the_drain(kind: str, tmp_path: Path) -> None:
    with running_app(database_url(kind, tmp_path), "--pool-size", "4") as (app, suffix):
        drains = app.call("concurrent", threads=4, per_thread=250)
        stats = app.stats()

    assert drains > 1  # the drain really ran while the threads appended
    assert _by_fingerprint(stats, f"SELECT items_{suffix}.n FROM")["count"] == 1000


@pytest.mark.parametrize("kind", KINDS)
def test_forked_child_reports_only_its_own_queries(kind: str, tmp_path: Path) -> None:
    with running_app(database_url(kind, tmp_path)) as (app, suffix):
        app.call("workload", fast=20, slow=0)
        child = app.call("fork_child", queries=5)
        parent = app.stats()

    fast = f"FROM items_{suffix} WHERE items_{suffix}.id = ?"
    assert _by_fingerprint(child, fast)["count"] == 5
    assert not [q for q in child["queries"] if "INSERT INTO" in q["fingerprint"]]  # the parent's setup
    assert _by_fingerprint(parent, fast)["count"] == 20


def test_importing_the_hook_needs_only_the_standard_library() -> None:
    code = (
        "import sys; import perftop.agent.sqlalchemy; "
        "print(sorted(m for m in ('sqlalchemy', 'textual', 'psutil') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=APP.parents[2], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
