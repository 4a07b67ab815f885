"""EXPLAIN through a real instrumented app (SQLite, PostgreSQL, MariaDB), and advice on real plans."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from perftop.agent.explain import advise, explain_sql, plan_from_rows
from tests.targets.sql_client import AppError, database_url, direct_engine, new_suffix, running_app

DB = pytest.mark.db


def _fingerprint(app: Any, *needles: str) -> str:
    found = [q["fingerprint"] for q in app.stats()["queries"] if all(n in q["fingerprint"] for n in needles)]
    assert len(found) == 1, found
    return str(found[0])


@pytest.mark.parametrize(
    "kind", ["sqlite", pytest.param("postgresql", marks=DB), pytest.param("mariadb", marks=DB)]
)
def test_index_advice_names_table_and_column_until_the_index_exists(kind: str, tmp_path: Path) -> None:
    with running_app(database_url(kind, tmp_path), rows=20000) as (app, suffix):
        table = f"items_{suffix}"
        assert app.call("find_by_email", email="user77@example.com", times=2) == 1
        fp = _fingerprint(app, f"WHERE {table}.email = ?")
        result = app.call("explain", params={"fingerprint": fp})

        assert result["fingerprint"] == fp and result["analyzed"] is False
        assert result["dialect"] == ("mysql" if kind == "mariadb" else kind)
        plan = result["plan"]
        if kind == "postgresql":
            assert plan[0]["Plan"]["Node Type"] == "Seq Scan"
        elif kind == "mariadb":
            assert plan["query_block"]["nested_loop"][0]["table"]["access_type"] == "ALL"
        else:
            assert plan[0]["detail"] == f"SCAN {table}"
        index_advice = [a for a in result["advice"] if a["sql"] and a["sql"].startswith("CREATE INDEX")]
        assert len(index_advice) == 1, result["advice"]
        advice = index_advice[0]
        assert (advice["kind"], advice["table"], advice["columns"]) == ("missing_index", table, ["email"])
        assert advice["sql"] == f"CREATE INDEX ix_{table}_email ON {table} (email)"
        assert table in advice["message"]

        app.call("exec", sql=advice["sql"])
        if kind == "postgresql":
            app.call("exec", sql=f"ANALYZE {table}")
        elif kind == "mariadb":
            app.call("exec", sql=f"ANALYZE TABLE {table}")
        app.call("find_by_email", email="user78@example.com", times=1)
        after = app.call("explain", params={"fingerprint": fp})

    assert after["advice"] == []
    if kind == "sqlite":
        assert after["plan"][0]["detail"].startswith(f"SEARCH {table} USING INDEX ix_{table}_email")


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=DB)])
def test_analyze_needs_confirm_a_select_and_writes_are_never_run(kind: str, tmp_path: Path) -> None:
    with running_app(database_url(kind, tmp_path)) as (app, suffix):
        table = f"items_{suffix}"
        app.call("find_by_email", email="user5@example.com", times=1)
        select_fp = _fingerprint(app, f"WHERE {table}.email = ?")
        app.call("exec", sql=f"UPDATE {table} SET n = n + 1000 WHERE id <= :k", params={"k": 10})
        update_fp = _fingerprint(app, f"UPDATE {table} SET n = n + ?")
        total = f"SELECT sum(n) FROM {table} WHERE id <= 10"
        before = app.call("scalar", sql=total)

        with pytest.raises(AppError) as no_confirm:
            app.call("explain", params={"fingerprint": select_fp, "analyze": True})
        with pytest.raises(AppError) as write:
            app.call("explain", params={"fingerprint": update_fp, "analyze": True, "confirm": True})
        with pytest.raises(AppError) as unknown:
            app.call("explain", params={"fingerprint": "SELECT nothing FROM nowhere"})
        plain = app.call("explain", params={"fingerprint": update_fp})
        assert app.call("scalar", sql=total) == before  # EXPLAIN of the UPDATE did not run it

        analyzed = app.call("explain", params={"fingerprint": select_fp, "analyze": True, "confirm": True})

    for refused, words in ((no_confirm, "confirm"), (write, "SELECT"), (unknown, "unknown fingerprint")):
        assert refused.value.value_error, refused.value.type
        assert words in refused.value.message and "\n" not in refused.value.message
    assert plain["analyzed"] is False and plain["plan"]
    if kind == "postgresql":
        assert analyzed["analyzed"] is True
        node = analyzed["plan"][0]["Plan"]
        assert node["Actual Rows"] == 1 and "Execution Time" in analyzed["plan"][0]
    else:
        assert analyzed["analyzed"] is False  # SQLite has no EXPLAIN ANALYZE: the estimated plan


@DB
def test_stale_statistics_advice_from_explain_analyze(tmp_path: Path) -> None:
    with running_app(database_url("postgresql", tmp_path)) as (app, suffix):
        stale = f"stale_{suffix}"
        app.call("exec", sql=f"CREATE TABLE {stale} (id int, n int) WITH (autovacuum_enabled = false)")
        app.call("exec", sql=f"INSERT INTO {stale} SELECT g, 1 FROM generate_series(1, 20000) g")
        app.call("exec", sql=f"ANALYZE {stale}")
        app.call("exec", sql=f"UPDATE {stale} SET n = 2")  # statistics still say every n is 1
        app.call("scalar", sql=f"SELECT count(*) FROM {stale} WHERE n = 2")
        fp = _fingerprint(app, f"FROM {stale} WHERE n = ?")
        result = app.call("explain", params={"fingerprint": fp, "analyze": True, "confirm": True})

    kinds = {a["kind"]: a for a in result["advice"]}
    assert kinds["stale_statistics"]["table"] == stale
    assert kinds["stale_statistics"]["sql"] == f"ANALYZE {stale}"
    assert kinds["missing_index"]["columns"] == ["n"]


# -- advice on real plans, taken straight from the databases ----------------------------------------------


def _plan(conn: Any, dialect: str, statement: str, analyze: bool = False, mariadb: bool = False) -> Any:
    sql, _ = explain_sql(dialect, statement, analyze, mariadb, 10.0)
    result = conn.exec_driver_sql(sql)
    return plan_from_rows(dialect, list(result.keys()), [tuple(r) for r in result.fetchall()])


def test_sqlite_order_by_temp_btree_and_automatic_index(tmp_path: Path) -> None:
    with direct_engine(database_url("sqlite", tmp_path)) as engine, engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE people (id INTEGER PRIMARY KEY, email TEXT, team INT, born INT)")
        conn.exec_driver_sql("CREATE TABLE teams (id INTEGER PRIMARY KEY, label TEXT)")
        ordered = "SELECT id FROM people WHERE team = 3 ORDER BY born"
        plan = _plan(conn, "sqlite", ordered)
        joined = "SELECT p.id FROM people AS p JOIN teams t ON t.label = p.email WHERE p.born > 1990"
        join_plan = _plan(conn, "sqlite", joined)

    assert [row["detail"] for row in plan] == ["SCAN people", "USE TEMP B-TREE FOR ORDER BY"]
    advice = {(a["kind"], tuple(a["columns"])): a for a in advise("sqlite", plan, ordered)}
    assert set(advice) == {("missing_index", ("team",)), ("order_index", ("team", "born"))}
    assert (
        advice[("order_index", ("team", "born"))]["sql"]
        == "CREATE INDEX ix_people_team_born ON people (team, born)"
    )

    assert any("AUTOMATIC" in row["detail"] for row in join_plan), join_plan
    join_advice = {(a["table"], tuple(a["columns"])) for a in advise("sqlite", join_plan, joined)}
    assert ("teams", ("label",)) in join_advice
    assert ("people", ("born",)) in join_advice


@DB
def test_postgresql_sort_spill_and_nested_loop(tmp_path: Path) -> None:
    url = database_url("postgresql", tmp_path)
    suffix = new_suffix()
    a, b = f"nla_{suffix}", f"nlb_{suffix}"
    with direct_engine(url) as engine, engine.connect() as conn:
        try:
            conn.exec_driver_sql(
                f"CREATE TABLE {a} AS SELECT g AS id, md5(g::text) AS label FROM generate_series(1, 5000) g"
            )
            conn.exec_driver_sql(
                f"CREATE TABLE {b} AS SELECT g AS id, mod(g, 5000) AS a_id FROM generate_series(1, 5000) g"
            )
            conn.exec_driver_sql(f"ANALYZE {a}")
            conn.exec_driver_sql(f"ANALYZE {b}")
            conn.exec_driver_sql("SET LOCAL work_mem = '64kB'")
            sort_sql = f"SELECT * FROM {a} ORDER BY label"
            sort_plan = _plan(conn, "postgresql", sort_sql, analyze=True)
            conn.exec_driver_sql("SET LOCAL enable_hashjoin = off")
            conn.exec_driver_sql("SET LOCAL enable_mergejoin = off")
            join_sql = f"SELECT * FROM {a} x JOIN {b} y ON y.a_id = x.id WHERE x.label <> 'z'"
            join_plan = _plan(conn, "postgresql", join_sql)
        finally:
            conn.rollback()

    spill = [x for x in advise("postgresql", sort_plan, sort_sql, analyzed=True) if x["kind"] == "sort_spill"]
    assert len(spill) == 1 and spill[0]["sql"].startswith("SET work_mem = '")
    assert spill[0]["columns"] == ["label"]

    assert join_plan[0]["Plan"]["Node Type"] == "Nested Loop"
    loops = [x for x in advise("postgresql", join_plan, join_sql) if x["kind"] == "nested_loop"]
    assert len(loops) == 1, advise("postgresql", join_plan, join_sql)
    assert (loops[0]["table"], loops[0]["columns"]) in ((a, ["id"]), (b, ["a_id"]))


@DB
def test_mariadb_block_nested_loop(tmp_path: Path) -> None:
    url = database_url("mariadb", tmp_path)
    suffix = new_suffix()
    t, u = f"bnlt_{suffix}", f"bnlu_{suffix}"
    with direct_engine(url) as engine, engine.connect() as conn:
        try:
            conn.exec_driver_sql(f"CREATE TABLE {t} (id INT PRIMARY KEY, email VARCHAR(100), n INT)")
            conn.exec_driver_sql(f"CREATE TABLE {u} (id INT PRIMARY KEY, name VARCHAR(100))")
            values = ", ".join(f"({i}, 'u{i}', {i % 9})" for i in range(1, 2001))
            conn.exec_driver_sql(f"INSERT INTO {t} VALUES {values}")
            conn.exec_driver_sql(
                f"INSERT INTO {u} VALUES " + ", ".join(f"({i}, 'u{i}')" for i in range(1, 301))
            )
            conn.exec_driver_sql(f"ANALYZE TABLE {t}")
            conn.exec_driver_sql(f"ANALYZE TABLE {u}")
            sql = f"SELECT * FROM {t} x JOIN {u} ON {u}.name = x.email WHERE x.n > 3"
            plan = _plan(conn, "mysql", sql, mariadb=True)
        finally:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {t}")
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {u}")

    found = {(x["kind"], x["table"], tuple(x["columns"])) for x in advise("mysql", plan, sql)}
    assert ("nested_loop", t, ("email",)) in found, (found, plan)
    assert ("missing_index", t, ("n",)) in found


@DB
def test_explain_runs_on_an_engine_that_ran_the_fingerprint(tmp_path: Path) -> None:
    """One app, a PostgreSQL and a SQLite engine, one fingerprint on both: EXPLAIN runs where it succeeded
    (not where it last ran and failed), and on the dialect asked for."""
    from perftop.collectors.agent_view import call_agent
    from tests.targets.secret_client import secret_app

    pg_url = database_url("postgresql", tmp_path)
    table = f"both_{new_suffix()}"
    select = f"SELECT count(*) FROM {table} WHERE n = :n"
    create = f"CREATE TABLE {table} (id INT PRIMARY KEY, n INT)"
    with secret_app(pg_url, database_url("sqlite", tmp_path)) as app:
        try:
            app.sql(create, engine=0)
            assert app.sql(select, {"n": 1}, engine=0, fetch=True) == [[0]]
            failed = app.failing_sql(select, {"n": 1}, engine=1)  # SQLite has no such table (yet)
            fp = f"SELECT count(*) FROM {table} WHERE n = ?"

            def explain(**params: Any) -> dict[str, Any]:
                result: dict[str, Any] = call_agent(
                    app.pid, "explain", {"fingerprint": fp, **params}, app.socket_dir, 60.0
                )
                return result

            after_failure = explain()
            app.sql(create, engine=1)
            assert app.sql(select, {"n": 1}, engine=1, fetch=True) == [[0]]
            most_recent = explain()
            asked = explain(dialect="postgresql")
        finally:
            app.sql(f"DROP TABLE IF EXISTS {table}", engine=0)

    assert "no such table" in failed.message
    assert after_failure["dialect"] == "postgresql" and after_failure["plan"][0]["Plan"]["Node Type"]
    assert most_recent["dialect"] == "sqlite" and most_recent["plan"][0]["detail"].startswith("SCAN")
    assert asked["dialect"] == "postgresql"


def test_timeouts_must_be_positive_and_bounded(tmp_path: Path) -> None:
    with running_app(database_url("sqlite", tmp_path)) as (app, suffix):
        app.call("find_by_email", email="user5@example.com", times=1)
        fp = _fingerprint(app, f"WHERE items_{suffix}.email = ?")
        refused = []
        for bad in (0, -1.0, 301.0, 1e300, True, "5"):
            with pytest.raises(AppError) as failed:
                app.call("explain", params={"fingerprint": fp, "timeout_s": bad})
            refused.append(failed.value)
        small = app.call("explain", params={"fingerprint": fp, "timeout_s": 0.0004})

    for failed in refused:
        assert failed.value_error and "timeout_s" in failed.message and "\n" not in failed.message
    assert small["plan"][0]["detail"].startswith("SCAN")  # SQLite's plan takes no time: within any timeout
