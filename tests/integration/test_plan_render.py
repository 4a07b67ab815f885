"""Plans from the real databases (PostgreSQL, MariaDB, SQLite) rendered as a tree: nodes in the database's
order and nesting, the figures it reported (estimated and actual rows, rows removed), the costly node
marked, and what is wrong named (full scans feeding a join, estimates 10x off, temporary b-trees)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from perftop.agent.explain import advise
from perftop.render.plan import PlanLine, plan_lines, plan_text
from tests.targets.sql_client import database_url, new_suffix

JOIN = (
    "SELECT p.* FROM {post} p JOIN {followers} f ON f.followed_id = p.user_id "
    "WHERE f.follower_id = 7 ORDER BY p.ts DESC LIMIT 10"
)


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[tuple[sa.engine.Engine, dict[str, str]]]:
    engine = sa.create_engine(database_url("postgresql", tmp_path), poolclass=sa.pool.NullPool)
    schema = f"pt_plan_{new_suffix()}"
    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
        c.exec_driver_sql(f"CREATE TABLE {schema}.followers (follower_id int, followed_id int)")
        c.exec_driver_sql(
            f"CREATE TABLE {schema}.post (id serial primary key, user_id int, body text, ts int)"
        )
        c.exec_driver_sql(
            f"INSERT INTO {schema}.followers SELECT i %% 1000, i %% 997 FROM generate_series(1, 80000) i"
        )
        c.exec_driver_sql(
            f"INSERT INTO {schema}.post (user_id, body, ts) "
            "SELECT i %% 1000, 'x', i FROM generate_series(1, 20000) i"
        )
        c.exec_driver_sql(f"CREATE TABLE {schema}.pairs (a int, b int)")
        c.exec_driver_sql(
            f"INSERT INTO {schema}.pairs SELECT i %% 100, i %% 100 FROM generate_series(1, 100000) i"
        )
        c.exec_driver_sql(f"ANALYZE {schema}.followers, {schema}.post, {schema}.pairs")
    names = {"post": f"{schema}.post", "followers": f"{schema}.followers", "pairs": f"{schema}.pairs"}
    yield engine, names
    with engine.begin() as c:
        c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    engine.dispose()


def pg_plan(engine: sa.engine.Engine, sql: str, analyze: bool) -> Any:
    options = "ANALYZE, BUFFERS, FORMAT JSON" if analyze else "FORMAT JSON"
    with engine.connect() as c:
        return c.exec_driver_sql(f"EXPLAIN ({options}) {sql}").scalar()


def headline(line: PlanLine) -> str:
    return line.text.split("  (")[0]


def test_postgresql_join_plan_is_a_tree_with_the_filtered_scan_named(pg: Any) -> None:
    engine, names = pg
    plan = pg_plan(engine, JOIN.format(**names), analyze=True)
    lines = plan_lines("postgresql", plan)
    nodes = [(line.depth, headline(line)) for line in lines[:-1]]
    # The oracle: the database's own nesting of the same plan, walked independently here.
    expected: list[tuple[int, str]] = []

    def walk(node: dict[str, Any], depth: int) -> None:
        expected.append((depth, node["Node Type"]))
        for child in node.get("Plans", []):
            walk(child, depth + 1)

    walk(plan[0]["Plan"], 0)
    assert [d for d, _ in nodes] == [d for d, _ in expected]
    assert all(
        kind.split()[-1] in text or kind in text for (_, text), (_, kind) in zip(nodes, expected, strict=True)
    )
    scan = next(line for line in lines if headline(line).startswith("Seq Scan on followers"))
    removed = next(n for n in _pg_nodes(plan) if n.get("Relation Name") == "followers")[
        "Rows Removed by Filter"
    ]
    assert f"rows removed by filter: {removed:,}" in scan.details
    assert any(d == "Filter: (follower_id = 7)" for d in scan.details)
    assert any("full scan" in w for w in scan.warn)
    join = next(line for line in lines if "Join" in headline(line))
    assert any(d.startswith("Hash Cond:") for d in join.details)
    assert "execution time" in lines[-1].text
    # The marked node is the one with the largest own share, and the shares add up to the whole.
    shares = [line.share for line in lines if line.share is not None]
    assert abs(sum(shares) - 1.0) < 0.05
    assert any(line.hot for line in lines)
    assert max(lines, key=lambda line: line.share or 0).hot
    text = plan_text("postgresql", plan)
    assert ">> " in text and "! full scan" in text


def _pg_nodes(plan: Any) -> Iterator[dict[str, Any]]:
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.get("Plans", []))


def test_postgresql_estimated_plan_uses_costs(pg: Any) -> None:
    engine, names = pg
    lines = plan_lines("postgresql", pg_plan(engine, JOIN.format(**names), analyze=False))
    assert all("cost " in line.text for line in lines)
    assert any(line.hot for line in lines)


def test_postgresql_row_estimate_miss_suggests_analyze(pg: Any) -> None:
    engine, names = pg
    plan = pg_plan(engine, f"SELECT * FROM {names['pairs']} WHERE a = 1 AND b = 1", analyze=True)
    scan = plan_lines("postgresql", plan)[0]
    node = plan[0]["Plan"]
    ratio = node["Actual Rows"] / node["Plan Rows"]
    assert ratio >= 10, f"the planner guessed better than this test expects: {node}"
    assert any("row estimate off" in w for w in scan.warn), scan


def test_a_primary_key_lookup_has_nothing_to_warn(pg: Any) -> None:
    engine, names = pg
    lines = plan_lines("postgresql", pg_plan(engine, f"SELECT * FROM {names['post']} WHERE id = 5", True))
    assert "Index Scan" in lines[0].text
    assert not any(line.warn for line in lines)


@pytest.fixture
def mariadb(tmp_path: Path) -> Iterator[tuple[sa.engine.Engine, dict[str, str]]]:
    engine = sa.create_engine(database_url("mariadb", tmp_path), poolclass=sa.pool.NullPool)
    suffix = new_suffix()
    names = {"post": f"pt_post_{suffix}", "followers": f"pt_followers_{suffix}"}
    with engine.begin() as c:
        c.exec_driver_sql(f"CREATE TABLE {names['followers']} (follower_id int, followed_id int)")
        c.exec_driver_sql(
            f"CREATE TABLE {names['post']} "
            "(id int primary key auto_increment, user_id int, body text, ts int)"
        )
        c.exec_driver_sql(
            f"INSERT INTO {names['followers']} SELECT seq %% 1000, seq %% 997 FROM seq_1_to_80000"
        )
        c.exec_driver_sql(
            f"INSERT INTO {names['post']} (user_id, body, ts) "
            "SELECT seq %% 1000, 'x', seq FROM seq_1_to_20000"
        )
    yield engine, names
    with engine.begin() as c:
        c.exec_driver_sql(f"DROP TABLE {names['post']}, {names['followers']}")
    engine.dispose()


@pytest.mark.parametrize("analyze", [False, True])
def test_mariadb_join_plan_names_both_full_scans_and_the_join_buffer(mariadb: Any, analyze: bool) -> None:
    engine, names = mariadb
    verb = "ANALYZE FORMAT=JSON" if analyze else "EXPLAIN FORMAT=JSON"
    with engine.connect() as c:
        plan = json.loads(c.exec_driver_sql(f"{verb} {JOIN.format(**names)}").scalar())
    lines = plan_lines("mariadb", plan)
    scans = [line for line in lines if line.text.startswith("full scan on")]
    assert {line.text.split()[3] for line in scans} == {"p", "f"}  # MariaDB names tables by their alias
    assert all("full table scan" in line.warn for line in scans)
    follower = next(line for line in scans if line.text.split()[3] == "f")
    assert any(d == "attached condition: " + _condition(plan, "f") for d in follower.details)
    assert any(line.text.startswith("block-nl-join") for line in lines)
    if analyze:
        assert "actual 80,000" in follower.text
        assert any(line.hot for line in lines)
    assert plan_text("mariadb", plan).count("! full table scan") == 2


def _condition(plan: Any, table: str) -> str:
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if value.get("table_name") == table and "attached_condition" in value:
                found.append(value["attached_condition"])
            for child in value.values():
                walk(child)
        elif isinstance(value, list):
            for child in value:
                walk(child)

    walk(plan)
    return found[0]


def test_sqlite_query_plan_tree_and_its_warnings() -> None:
    engine = sa.create_engine("sqlite://")
    with engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE followers (follower_id int, followed_id int)")
        c.exec_driver_sql("CREATE TABLE post (id integer primary key, user_id int, body text, ts int)")
        rows = c.exec_driver_sql("EXPLAIN QUERY PLAN " + JOIN.format(post="post", followers="followers"))
        plan = [dict(r) for r in rows.mappings()]
        pk = [
            dict(r)
            for r in c.exec_driver_sql("EXPLAIN QUERY PLAN SELECT * FROM post WHERE id = 3").mappings()
        ]
    lines = plan_lines("sqlite", plan)
    assert [line.text for line in lines] == [row["detail"] for row in plan]
    assert any("full table scan" in line.warn for line in lines if line.text.startswith("SCAN"))
    assert any("temporary index" in w for line in lines for w in line.warn)
    assert any("b-tree" in w for line in lines for w in line.warn)
    assert not any(line.warn for line in plan_lines("sqlite", pk))


def test_a_plan_of_unknown_shape_is_shown_as_its_text() -> None:
    lines = plan_lines("mysql", "-> Limit: 10 row(s)\n    -> Sort: t.ts DESC")
    assert [line.text for line in lines] == ["-> Limit: 10 row(s)", "    -> Sort: t.ts DESC"]


def test_advice_reads_the_joins_of_a_follower_post_plan(pg: Any) -> None:
    """The slow timeline query of a real ORM app: a hash join reading every post to match the few a user
    follows, and an OR across both tables that only the join can apply."""
    engine, names = pg
    statement = JOIN.format(**names)
    advice = advise("postgresql", pg_plan(engine, statement, analyze=True), statement, analyzed=True)
    by_kind = {(a["kind"], a["table"]): a for a in advice}
    assert by_kind[("missing_index", "followers")]["columns"] == ["follower_id"]
    scan = by_kind[("join_scan", "post")]
    assert scan["columns"] == ["user_id"] and "CREATE INDEX" in scan["sql"] and "(user_id)" in scan["sql"]
    assert "20,000 rows of post" in scan["message"]

    either = (
        f"SELECT p.id FROM {names['post']} p JOIN {names['followers']} f ON f.followed_id = p.user_id "
        "WHERE f.follower_id = 7 OR p.ts = 5"
    )
    plan = pg_plan(engine, either, analyze=True)
    joins = [n for n in _pg_nodes(plan) if n.get("Join Filter")]
    assert joins and joins[0]["Rows Removed by Join Filter"] > 1000, plan
    advice = advise("postgresql", plan, either, analyzed=True)
    filters = {a["table"]: a for a in advice if a["kind"] == "join_filter"}
    assert filters["followers"]["columns"] == ["follower_id"]
    assert filters["post"]["columns"] == ["ts"]
    assert all("7" not in a["message"] and "= 5" not in a["message"] for a in advice)  # values redacted


def test_a_plan_that_uses_its_indexes_gets_no_advice(pg: Any) -> None:
    engine, names = pg
    statement = f"SELECT * FROM {names['post']} WHERE id = 5"
    assert advise("postgresql", pg_plan(engine, statement, analyze=True), statement, analyzed=True) == []
