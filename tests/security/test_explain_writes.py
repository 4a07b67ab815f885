"""EXPLAIN never writes: a SELECT that calls a function that inserts, and a SELECT of a sequence's next value,
leave the table and the sequence unchanged after `perftop action explain --analyze --yes` (refused: the
database refuses them in the read-only transaction the ANALYZE runs in) and after a plain EXPLAIN.

The oracle is the database itself, read by the test on a connection of its own; the log table is MyISAM on
MariaDB, so a rollback could not hide a write that happened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from perftop.collectors.agent_view import call_agent
from tests.targets.secret_client import SecretApp, perftop, secret_app
from tests.targets.sql_client import database_url, direct_engine, new_suffix

pytestmark = pytest.mark.db


def _scalar(engine: Any, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.exec_driver_sql(sql).scalar()


def _setup(engine: Any, kind: str, s: str) -> tuple[list[str], list[str]]:
    """Create the log table, the inserting function and the sequence; their DROP statements; the two
    SELECTs that write."""
    with engine.begin() as conn:
        if kind == "mariadb":
            conn.exec_driver_sql(
                f"CREATE TABLE wlog_{s} (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=MyISAM"
            )
            conn.exec_driver_sql(
                f"CREATE FUNCTION wfn_{s}() RETURNS INT MODIFIES SQL DATA "
                f"BEGIN INSERT INTO wlog_{s} (v) VALUES (1); RETURN 1; END"
            )
            conn.exec_driver_sql(f"CREATE SEQUENCE wseq_{s} NOCACHE")  # every NEXTVAL shows in the table
            selects = [f"SELECT wfn_{s}() AS x", f"SELECT NEXTVAL(wseq_{s}) AS x"]
            drops = [
                f"DROP FUNCTION IF EXISTS wfn_{s}",
                f"DROP TABLE IF EXISTS wlog_{s}",
                f"DROP SEQUENCE IF EXISTS wseq_{s}",
            ]
        else:
            conn.exec_driver_sql(f"CREATE TABLE wlog_{s} (id SERIAL PRIMARY KEY, v INT)")
            conn.exec_driver_sql(
                f"CREATE FUNCTION wfn_{s}() RETURNS INT LANGUAGE plpgsql VOLATILE AS "
                f"$$ BEGIN INSERT INTO wlog_{s} (v) VALUES (1); RETURN 1; END $$"
            )
            conn.exec_driver_sql(f"CREATE SEQUENCE wseq_{s}")
            selects = [f"SELECT wfn_{s}() AS x", f"SELECT nextval('wseq_{s}') AS x"]
            drops = [
                f"DROP FUNCTION IF EXISTS wfn_{s}()",
                f"DROP TABLE IF EXISTS wlog_{s}",
                f"DROP SEQUENCE IF EXISTS wseq_{s}",
            ]
    return selects, drops


def _state(engine: Any, kind: str, s: str) -> tuple[int, int]:
    """(rows in the log table, the sequence's next value as the server keeps it)."""
    rows = int(_scalar(engine, f"SELECT count(*) FROM wlog_{s}"))
    if kind == "mariadb":
        return rows, int(_scalar(engine, f"SELECT next_not_cached_value FROM wseq_{s}"))
    return rows, int(_scalar(engine, f"SELECT last_value FROM wseq_{s}"))


def _fingerprint_of(app: SecretApp, needle: str) -> str:
    stats = call_agent(app.pid, "stats", {"window": None}, app.socket_dir, 30.0)
    found = [q["fingerprint"] for q in stats["queries"]["queries"] if needle in q["fingerprint"]]
    assert len(found) == 1, found
    return str(found[0])


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_explain_of_a_select_that_writes_changes_nothing(kind: str, tmp_path: Path) -> None:
    url = database_url(kind, tmp_path)
    s = new_suffix()
    with direct_engine(url) as engine:
        selects, drops = _setup(engine, kind, s)
        try:
            with secret_app(url) as app:
                for sql in selects:
                    app.sql(sql, None, fetch=True)
                start = _state(engine, kind, s)
                assert start[0] == 1  # the app's own call of the function did write: the oracle sees writes
                results = []
                for needle in (f"wfn_{s}", f"wseq_{s}" if kind == "mariadb" else "nextval"):
                    fp = _fingerprint_of(app, needle)
                    analyze = perftop(
                        app,
                        "action",
                        "--pid",
                        str(app.pid),
                        "explain",
                        "--fingerprint",
                        fp,
                        "--analyze",
                        "--yes",
                    )
                    plain = perftop(
                        app, "action", "--pid", str(app.pid), "explain", "--fingerprint", fp, "--json"
                    )
                    results.append((fp, analyze, plain))
                end = _state(engine, kind, s)
        finally:
            with engine.begin() as conn:
                for drop in drops:
                    conn.exec_driver_sql(drop)

    assert end == start, (start, end)
    for fp, analyze, plain in results:
        assert analyze.returncode == 1, (fp, analyze.stdout, analyze.stderr)
        message = analyze.stderr.strip()
        assert message.startswith("perftop: ") and "\n" not in message, message
        assert "ANALYZE refused" in message and "read-only" in message, message
        assert plain.returncode == 0, (fp, plain.stderr)  # a plain EXPLAIN does not run it: allowed
