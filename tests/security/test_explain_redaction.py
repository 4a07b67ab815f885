"""Redaction of values in error text, SQL expressions and plans (the functions the agent runs before
anything leaves the app), on the forms the databases write and on real plans taken from them."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perftop.agent.explain import advise, explain_sql, plan_from_rows, redact_plan
from perftop.agent.fingerprint import normalize, redact_error, redact_sql
from tests.targets.sql_client import database_url, direct_engine, new_suffix

SECRET = "SECRETX"
SERIES = "generate_series(1, 5000) g"

ERRORS = [
    # PostgreSQL
    ('invalid input syntax for type integer: "SECRETX-1"', "invalid input syntax for type integer: ?"),
    ('invalid input syntax for type uuid: "a"b" SECRETX"', "invalid input syntax for type uuid: ?"),
    (
        'duplicate key value violates unique constraint "users_email_key"',
        'duplicate key value violates unique constraint "users_email_key"',
    ),
    ("DETAIL:  Key (email)=(bob-SECRETX@x.org) already exists.", "DETAIL:  Key (email)=(?) already exists."),
    (
        "DETAIL:  Key (lower(email), n)=(a), SECRETX (b, 3) already exists.",
        "DETAIL:  Key (lower(email), n)=(?) already exists.",
    ),
    (
        'Key (user_id)=(123456) is not present in table "users".',
        'Key (user_id)=(?) is not present in table "users".',
    ),
    ("Failing row contains (1, SECRETX, null).", "Failing row contains (?)."),
    ('value "99999999999" is out of range for type integer', "value ? is out of range for type integer"),
    ('relation "missing_items" does not exist', 'relation "missing_items" does not exist'),
    ('column "SECRETX" does not exist', 'column "SECRETX" does not exist'),  # a name, kept
    # MySQL / MariaDB
    ("Duplicate entry 'bob-SECRETX@x.org' for key 'email'", "Duplicate entry ? for key 'email'"),
    ("Duplicate entry 'O'Brien SECRETX' for key 'users.email'", "Duplicate entry ? for key 'users.email'"),
    (
        "Incorrect integer value: 'SECRETX' for column `test`.`t`.`n` at row 1",
        "Incorrect integer value: ? for column `test`.`t`.`n` at row 1",
    ),
    (
        "You have an error in your SQL syntax; check the manual near '= 'SECRETX' LIMIT 1' at line 1",
        "You have an error in your SQL syntax; check the manual near ? at line 1",
    ),
    ("Table 'test.missing_items' doesn't exist", "Table 'test.missing_items' doesn't exist"),
    ("Data truncated for column 'n' at row 1", "Data truncated for column 'n' at row 1"),
    # SQLite: names only
    ("UNIQUE constraint failed: users.email", "UNIQUE constraint failed: users.email"),
    ('near "SELEC": syntax error', "near ?: syntax error"),
    # anything else: quoted strings and numbers are values; an unterminated quote hides the rest
    ("cannot cast 'SECRETX' to 42", "cannot cast ? to ?"),
    ("a value cut in the middle: 'SECRETX and more", "a value cut in the middle: ?"),
    ("dollar $q$ SECRETX $q$ end", "dollar ? end"),
    # cut short (only an error's first line is kept, and at most ERROR_SCAN_MAX characters of it)
    ("DETAIL:  Key (email)=(bob-SECRETX", "DETAIL:  Key (email)=(?"),
    ("Failing row contains (1, SECRETX", "Failing row contains (?"),
    ("Duplicate entry 'SECRETX", "Duplicate entry ?"),
    ("Duplicate entry '" + "x" * 3000 + "SECRETX' for key 'email'", "Duplicate entry ?"),
]


@pytest.mark.parametrize(("raw", "redacted"), ERRORS)
def test_error_forms(raw: str, redacted: str) -> None:
    assert redact_error(raw) == redacted


_value = st.text(alphabet=st.sampled_from("ab'\"()\\ ,=$x1"), max_size=8).map(lambda t: t + SECRET + t[::-1])

_FORMS = [
    "Duplicate entry '{v}' for key 'email'",
    'invalid input syntax for type integer: "{v}"',
    "Key (email)=({v}) already exists.",
    "Failing row contains (1, {v}, 2).",
    "check the manual for the right syntax to use near '{v}' at line 1",
    "Incorrect integer value: '{v}' for column `t`.`n` at row 1",
]


@settings(max_examples=300, deadline=None)
@given(value=_value, form=st.sampled_from(_FORMS))
def test_no_value_survives_in_an_error_form(value: str, form: str) -> None:
    assert SECRET not in redact_error(form.format(v=value))


SQL = [
    ("((email)::text = 'bob''s SECRETX'::text)", False, "((email)::text = ?::text)"),
    ("(n > 42) AND (x.a = E'SECRETX\\'s')", False, "(n > ?) AND (x.a = ?)"),
    ("(body = $t$SECRETX$t$)", False, "(body = ?)"),
    ("((hashed SubPlan 1) OR (id = 7))", False, "((hashed SubPlan 1) OR (id = ?))"),
    ('("Mixed Name" = t2)', False, '("Mixed Name" = t2)'),
    ('(`t`.`email` = "SECRETX")', True, "(`t`.`email` = ?)"),
    ("a = 1 /* SECRETX */", False, "a = ? /*?*/"),
]


@pytest.mark.parametrize(("raw", "dq", "redacted"), SQL)
def test_sql_expressions(raw: str, dq: bool, redacted: str) -> None:
    assert redact_sql(raw, dq) == redacted


@settings(max_examples=300, deadline=None)
@given(value=_value)
def test_no_quoted_value_survives_in_sql(value: str) -> None:
    single = "'" + value.replace("'", "''") + "'"
    assert SECRET not in redact_sql(
        f"(a = {single}) AND b = E'{value.replace(chr(92), '').replace(chr(39), chr(92) + chr(39))}'"
    )
    double = '"' + value.replace('"', '""') + '"'
    assert SECRET not in redact_sql(f"c = {double}", double_quoted_literals=True)
    assert SECRET not in normalize(f"SELECT * FROM t WHERE c = {double}", double_quoted_literals=True)


# -- real plans ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _connection(url: str) -> Iterator[Any]:
    with direct_engine(url) as engine, engine.connect() as conn:
        yield conn


def _plan(conn: Any, dialect: str, statement: str, analyze: bool = False) -> Any:
    sql, _ = explain_sql(dialect, statement, analyze, dialect == "mysql", 10.0)
    result = conn.exec_driver_sql(sql)
    return plan_from_rows(dialect, list(result.keys()), [tuple(r) for r in result.fetchall()])


_NAME_KEYS = ("Relation Name", "Alias", "Index Name", "Node Type", "table_name", "key", "access_type")


def _names(plan: Any) -> list[tuple[str, Any]]:
    """The names and node kinds of a plan, in order."""
    found: list[tuple[str, Any]] = []
    if isinstance(plan, dict):
        for key, value in plan.items():
            if key in _NAME_KEYS:
                found.append((key, value))
            found.extend(_names(value))
    elif isinstance(plan, list):
        for item in plan:
            found.extend(_names(item))
    return found


@pytest.mark.db
def test_postgresql_plans_lose_their_values_keep_their_names(tmp_path: Path) -> None:
    t, u = f"rp_{new_suffix()}", f"rq_{new_suffix()}"
    statements = [
        f"SELECT * FROM {t} WHERE email = 'SECRETX-filter' AND n > 424242",
        f"SELECT * FROM {t} WHERE id = 737373 AND email <> 'SECRETX-index'",
        f"SELECT * FROM {t} a JOIN {u} b ON b.t_id = a.id AND b.label <> 'SECRETX-join' WHERE a.n < 515151",
        f"SELECT * FROM {t} ORDER BY (email = 'SECRETX-sort')",
        f"SELECT * FROM {t} WHERE email IN (SELECT label FROM {u} WHERE label = 'SECRETX-sub')",
    ]
    with _connection(database_url("postgresql", tmp_path)) as conn:
        try:
            conn.exec_driver_sql(
                f"CREATE TABLE {t} AS SELECT g AS id, 'u' || g AS email, mod(g, 7) AS n FROM {SERIES}"
            )
            conn.exec_driver_sql(
                f"CREATE TABLE {u} AS SELECT g AS id, g AS t_id, 'l' || g AS label FROM {SERIES}"
            )
            conn.exec_driver_sql(f"CREATE INDEX ON {t} (id)")
            conn.exec_driver_sql(f"ANALYZE {t}")
            conn.exec_driver_sql(f"ANALYZE {u}")
            plans = [
                (s, _plan(conn, "postgresql", s), _plan(conn, "postgresql", s, analyze=True))
                for s in statements
            ]
        finally:
            conn.rollback()
    for statement, plan, analyzed in plans:
        for raw in (plan, analyzed):
            text = json.dumps(raw)
            assert "SECRETX" in text, raw  # the database does show them
            shown = json.dumps(redact_plan("postgresql", raw))
            assert "SECRETX" not in shown and "424242" not in shown and "737373" not in shown, shown
            assert "515151" not in shown
            assert _names(json.loads(shown)) == _names(raw)  # names stay
            for advice in advise("postgresql", raw, statement, analyzed=raw is analyzed):
                assert "SECRETX" not in json.dumps(advice), advice
    kept = advise("postgresql", plans[0][1], statements[0], keep_values=True)
    assert any("SECRETX-filter" in a["message"] for a in kept), kept


@pytest.mark.db
def test_mariadb_plans_lose_their_values_keep_their_names(tmp_path: Path) -> None:
    t = f"rm_{new_suffix()}"
    statements = [
        f"SELECT * FROM {t} WHERE email = 'SECRETX-filter' AND n > 424242",
        f'SELECT * FROM {t} WHERE email = "SECRETX-dq" OR id = 737373',
        f"SELECT * FROM {t} x JOIN {t} y ON y.email = x.email AND y.email <> 'SECRETX-join'",
    ]
    with _connection(database_url("mariadb", tmp_path)) as conn:
        try:
            conn.exec_driver_sql(f"CREATE TABLE {t} (id INT PRIMARY KEY, email VARCHAR(100), n INT)")
            conn.exec_driver_sql(
                f"INSERT INTO {t} SELECT seq, concat('u', seq), MOD(seq, 7) FROM seq_1_to_500"
            )
            conn.exec_driver_sql(f"ANALYZE TABLE {t}")
            plans = [(s, _plan(conn, "mysql", s), _plan(conn, "mysql", s, analyze=True)) for s in statements]
        finally:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {t}")
    for statement, plan, analyzed in plans:
        for raw in (plan, analyzed):
            assert "SECRETX" in json.dumps(raw), raw
            shown = json.dumps(redact_plan("mysql", raw))
            assert "SECRETX" not in shown and "424242" not in shown and "737373" not in shown, shown
            assert _names(json.loads(shown)) == _names(raw)
            for advice in advise("mysql", raw, statement, analyzed=raw is analyzed):
                assert "SECRETX" not in json.dumps(advice), advice


def test_sqlite_plans_keep_their_numbers(tmp_path: Path) -> None:
    with _connection(database_url("sqlite", tmp_path)) as conn:
        conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, email TEXT, n INT)")
        statement = (
            "SELECT * FROM t WHERE email = 'SECRETX' AND n IN (SELECT n FROM t WHERE id > 5) ORDER BY n"
        )
        plan = _plan(conn, "sqlite", statement)
    assert redact_plan("sqlite", plan) == plan  # SQLite's details hold names and subquery numbers only
    assert "SECRETX" not in json.dumps(plan)


def test_mysql_explain_analyze_text_keeps_its_figures() -> None:
    """MySQL's EXPLAIN ANALYZE is a text tree (no MySQL server here: the form is MySQL 8's)."""
    tree = (
        "-> Filter: ((t.email = 'SECRETX') and (t.n = 424242))  (cost=0.35 rows=1) "
        "(actual time=0.021..0.023 rows=1 loops=1)\n"
        "    -> Table scan on t  (cost=0.35 rows=3) (actual time=0.019..0.020 rows=3 loops=1)\n"
        "-> Filter: (rows = 515151)  (never executed)"
    )
    assert redact_plan("mysql", tree) == (
        "-> Filter: ((t.email = ?) and (t.n = ?))  (cost=0.35 rows=1) "
        "(actual time=0.021..0.023 rows=1 loops=1)\n"
        "    -> Table scan on t  (cost=0.35 rows=3) (actual time=0.019..0.020 rows=3 loops=1)\n"
        "-> Filter: (rows = ?)  (never executed)"
    )
