"""A running EXPLAIN is bounded: a viewer killed while its EXPLAIN ANALYZE runs gets that statement cancelled
in the database (PostgreSQL, MariaDB) and the agent free for the next request, and a positive timeout below
a millisecond is a 1 ms timeout, never "no timeout".

The oracle is the database's own list of running statements (pg_stat_activity, information_schema
.PROCESSLIST), read by the test on a connection of its own. The statement sleeps 20 s and the EXPLAIN's own
timeout is 10 s, so the bounds below (5 s) are met only by a cancel.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from perftop.agent.sqlalchemy import EXPLAIN_CANCEL_GRACE_S, statement_timeout_ms
from perftop.collectors.agent_client import RequestFailed
from perftop.collectors.agent_view import call_agent
from tests.helpers import wait_for
from tests.targets.secret_client import SecretApp, secret_app, start_perftop
from tests.targets.sql_client import database_url, direct_engine

pytestmark = pytest.mark.db

CANCEL_BOUND_S = 5.0
SLEEP_S = 20


def _running_sleeps(engine: Any, kind: str) -> int:
    """Statements running the test's long sleep under EXPLAIN, as the database lists them."""
    import sqlalchemy as sa

    if kind == "postgresql":
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE :pattern "
            "AND pid <> pg_backend_pid()"
        )
    else:
        sql = (
            "SELECT count(*) FROM information_schema.PROCESSLIST WHERE COMMAND = 'Query' "
            "AND INFO LIKE :pattern AND ID <> CONNECTION_ID()"
        )
    pattern = "EXPLAIN%pg_sleep%" if kind == "postgresql" else "%ANALYZE%SLEEP%"
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), {"pattern": pattern}).scalar())


def _sleep_fingerprint(app: SecretApp, kind: str) -> str:
    """Record a 20 s sleep that timed out in the app: its fingerprint, with parameters that sleep 20 s."""
    sql = "SELECT pg_sleep(:s)" if kind == "postgresql" else "SELECT SLEEP(:s)"
    app.call("sql_timed_out", sql=sql, params={"s": SLEEP_S}, timeout_ms=200)
    return "SELECT pg_sleep(?)" if kind == "postgresql" else "SELECT SLEEP(?)"


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_a_killed_viewer_cancels_its_running_explain(kind: str, tmp_path: Path) -> None:
    url = database_url(kind, tmp_path)
    with direct_engine(url) as engine, secret_app(url) as app:
        fp = _sleep_fingerprint(app, kind)
        assert _running_sleeps(engine, kind) == 0
        viewer = start_perftop(
            app, "action", "--pid", str(app.pid), "explain", "--fingerprint", fp, "--analyze", "--yes"
        )
        try:
            wait_for(lambda: _running_sleeps(engine, kind) == 1, timeout=30)
            # While it runs, the agent answers other requests.
            t0 = time.monotonic()
            stats = call_agent(app.pid, "stats", {"window": None}, app.socket_dir, 30.0)
            stats_after = time.monotonic() - t0
            viewer.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            viewer.wait(timeout=10)
            wait_for(lambda: _running_sleeps(engine, kind) == 0, timeout=CANCEL_BOUND_S)
            cancelled_after = time.monotonic() - killed
            # The agent is free again: the next EXPLAIN runs (not "busy") and answers at once.
            t0 = time.monotonic()
            plain = wait_for(lambda: _explain_or_busy(app, fp), timeout=CANCEL_BOUND_S)
            answered_after = time.monotonic() - t0
        finally:
            if viewer.poll() is None:
                viewer.kill()
                viewer.wait(timeout=10)
            for stream in (viewer.stdout, viewer.stderr):
                if stream is not None:
                    stream.close()
    assert fp in [q["fingerprint"] for q in stats["queries"]["queries"]] and stats_after < CANCEL_BOUND_S
    assert cancelled_after < CANCEL_BOUND_S
    assert plain["analyzed"] is False and plain["fingerprint"] == fp
    assert answered_after < CANCEL_BOUND_S


def _explain_or_busy(app: SecretApp, fp: str) -> dict[str, Any] | None:
    """The plain EXPLAIN of `fp`, or None while the agent still says it is busy."""
    try:
        result: dict[str, Any] = call_agent(app.pid, "explain", {"fingerprint": fp}, app.socket_dir, 30.0)
    except RequestFailed as exc:
        if "busy" in str(exc):
            return None
        raise
    return result


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_a_sub_millisecond_timeout_is_a_timeout(kind: str, tmp_path: Path) -> None:
    url = database_url(kind, tmp_path)
    with secret_app(url) as app:
        fp = _sleep_fingerprint(app, kind)
        params = {"fingerprint": fp, "analyze": True, "confirm": True, "timeout_s": 0.0004}
        t0 = time.monotonic()
        with pytest.raises(RequestFailed) as failed:
            call_agent(app.pid, "explain", params, app.socket_dir, 60.0)
        elapsed = time.monotonic() - t0
    # The database's own timeout stopped it: sooner than perftop's backstop, which cancels a statement
    # still running EXPLAIN_CANCEL_GRACE_S past its timeout (with "no timeout" that is what would end it).
    assert elapsed < EXPLAIN_CANCEL_GRACE_S, elapsed
    assert "timeout" in str(failed.value), failed.value


def test_statement_timeout_rounds_up_to_whole_milliseconds() -> None:
    assert [statement_timeout_ms(s) for s in (1e-9, 0.0004, 0.001, 0.0011, 2.5)] == [1, 1, 1, 2, 2500]
