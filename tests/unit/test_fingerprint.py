"""Statement fingerprints: literals and parameters become `?`, lists collapse, formatting is folded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perftop.agent import fingerprint as fpmod
from perftop.agent.fingerprint import fingerprint, is_read_only_select, normalize, statement_kind

CASES = [
    # (label, statement, expected fingerprint)
    ("int literal", "SELECT * FROM users WHERE id = 42", "SELECT * FROM users WHERE id = ?"),
    ("negative number", "SELECT * FROM t WHERE a = -3.5e2", "SELECT * FROM t WHERE a = ?"),
    ("binary minus stays", "SELECT a - 1 FROM t", "SELECT a - ? FROM t"),
    ("hex number", "SELECT * FROM t WHERE flags = 0xFF", "SELECT * FROM t WHERE flags = ?"),
    ("hex string", "SELECT * FROM t WHERE b = X'0aff'", "SELECT * FROM t WHERE b = ?"),
    ("booleans", "SELECT * FROM t WHERE a = true AND b = FALSE", "SELECT * FROM t WHERE a = ? AND b = ?"),
    ("NULL kept", "SELECT * FROM t WHERE a IS NULL", "SELECT * FROM t WHERE a IS NULL"),
    ("string", "SELECT * FROM t WHERE name = 'bob'", "SELECT * FROM t WHERE name = ?"),
    ("doubled quote", "SELECT * FROM t WHERE name = 'O''Brien'", "SELECT * FROM t WHERE name = ?"),
    (
        "backslash quote",
        "SELECT * FROM t WHERE s = 'it\\'s' AND x = 1",
        "SELECT * FROM t WHERE s = ? AND x = ?",
    ),
    ("trailing backslash", "SELECT 'C:\\' , 'x' FROM t", "SELECT ?, ? FROM t"),
    ("E string", "SELECT * FROM t WHERE s = E'a\\'b\\n'", "SELECT * FROM t WHERE s = ?"),
    ("N string", "SELECT * FROM t WHERE s = N'héllo'", "SELECT * FROM t WHERE s = ?"),
    ("dollar string", "SELECT $fn$ it's $$ $fn$, $$x$$ FROM t", "SELECT ?, ? FROM t"),
    ("line comment", "SELECT a -- the a column\nFROM t", "SELECT a FROM t"),
    ("block comment", "/* report */ SELECT /*+ hint */ a FROM t", "SELECT a FROM t"),
    ("whitespace and case", "select\n\ta ,b\n from   t  where  a=1", "SELECT a, b FROM t WHERE a = ?"),
    (
        "identifiers keep case",
        'SELECT "UserName", `Mixed` FROM Accounts',
        'SELECT "UserName", `Mixed` FROM Accounts',
    ),
    ("qmark", "SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = ? AND b = ?"),
    ("format", "SELECT * FROM t WHERE a = %s AND b = %s", "SELECT * FROM t WHERE a = ? AND b = ?"),
    ("pyformat", "SELECT * FROM t WHERE a = %(a)s AND b = %(b_1)s", "SELECT * FROM t WHERE a = ? AND b = ?"),
    ("named", "SELECT * FROM t WHERE a = :a AND b = :b_1", "SELECT * FROM t WHERE a = ? AND b = ?"),
    ("numeric", "SELECT * FROM t WHERE a = :1 AND b = $2", "SELECT * FROM t WHERE a = ? AND b = ?"),
    (
        "cast kept",
        "SELECT a::int, b::text[] FROM t WHERE c = :c::jsonb",
        "SELECT a::int, b::text[] FROM t WHERE c = ?::jsonb",
    ),
    ("assignment kept", "SELECT @x := 5", "SELECT @x := ?"),
    ("IN list", "SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN (?)"),
    ("IN params", "SELECT * FROM t WHERE id IN (%(p1)s, %(p2)s)", "SELECT * FROM t WHERE id IN (?)"),
    (
        "IN tuples",
        "SELECT * FROM t WHERE (a, b) IN ((1, 2), (3, 4))",
        "SELECT * FROM t WHERE (a, b) IN ((?, ?))",
    ),
    (
        "ARRAY list",
        "SELECT * FROM t WHERE a = ANY(ARRAY[1, 2, 3])",
        "SELECT * FROM t WHERE a = ANY (ARRAY[?])",
    ),
    (
        "multi-row VALUES",
        "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')",
        "INSERT INTO t(a, b) VALUES (?, ?)",
    ),
    (
        "insertmanyvalues",
        "INSERT INTO t (a) SELECT p0::INT FROM (VALUES (?, 0), (?, 1)) AS imp(p0, n) ORDER BY n",
        "INSERT INTO t(a) SELECT p0::INT FROM (VALUES (?, ?)) AS imp(p0, n) ORDER BY n",
    ),
    (
        "CTE",
        "WITH recent AS (SELECT id FROM orders WHERE created > '2024-01-01') SELECT count(*) FROM recent",
        "WITH recent AS (SELECT id FROM orders WHERE created > ?) SELECT count(*) FROM recent",
    ),
    (
        "recursive CTE",
        "with recursive c(x) as (select 1 union all select x+1 from c where x<10) select * from c",
        "WITH RECURSIVE c(x) AS (SELECT ? UNION ALL SELECT x + ? FROM c WHERE x < ?) SELECT * FROM c",
    ),
    ("qualified names", "SELECT u.id FROM public.users AS u", "SELECT u.id FROM public.users AS u"),
    (
        "json operators",
        "SELECT doc->>'name' FROM t WHERE doc @> '{}'",
        "SELECT doc ->> ? FROM t WHERE doc @> ?",
    ),
    ("unterminated string", "SELECT * FROM t WHERE a = 'oops", "SELECT * FROM t WHERE a = ?"),
]


@pytest.mark.parametrize(("label", "sql", "expected"), CASES, ids=[c[0] for c in CASES])
def test_normalize(label: str, sql: str, expected: str) -> None:
    assert normalize(sql) == expected


SAME_FINGERPRINT = [
    (
        "IN lists of different lengths",
        ["SELECT * FROM t WHERE id IN (1)", "SELECT * FROM t WHERE id IN (1,2,3,4,5,6)"],
    ),
    (
        "IN lists of each paramstyle",
        [
            "SELECT * FROM t WHERE id IN (?, ?)",
            "SELECT * FROM t WHERE id IN (%s)",
            "SELECT * FROM t WHERE id IN (%(id_1_1)s, %(id_1_2)s, %(id_1_3)s)",
            "SELECT * FROM t WHERE id IN (:a, :b)",
            "SELECT * FROM t WHERE id IN ($1, $2, $3, $4)",
        ],
    ),
    (
        "multi-row inserts of different lengths",
        [
            "INSERT INTO t (a) VALUES (1)",
            "INSERT INTO t (a) VALUES (1), (2), (3)",
            "insert into t(a) values (?),(?)",
        ],
    ),
    (
        "comments and whitespace",
        ["SELECT a FROM t", "select a\nfrom t -- x", "/* a */ SELECT   a FROM t /* b */"],
    ),
]


@pytest.mark.parametrize(("label", "statements"), SAME_FINGERPRINT, ids=[c[0] for c in SAME_FINGERPRINT])
def test_same_fingerprint(label: str, statements: list[str]) -> None:
    assert len({normalize(s) for s in statements}) == 1


def test_different_shapes_differ() -> None:
    assert normalize("SELECT a FROM t WHERE b = 1") != normalize("SELECT a FROM t WHERE c = 1")
    assert normalize("SELECT * FROM t WHERE a IN (1, 2)") != normalize("SELECT * FROM t WHERE a = 1")


def test_cache_is_bounded_and_hits() -> None:
    fpmod.cache.clear()
    first = fingerprint("SELECT 1 FROM cache_probe")
    assert fpmod.cache["SELECT 1 FROM cache_probe"] == first
    for i in range(fpmod.CACHE_MAX + 10):
        fingerprint(f"SELECT {i} AS c{i}")
    assert len(fpmod.cache) <= fpmod.CACHE_MAX


def test_long_statement_is_cut() -> None:
    sql = "SELECT " + ", ".join(f"column_{i}" for i in range(5000)) + " FROM t"
    assert len(normalize(sql)) == fpmod.MAX_FINGERPRINT_CHARS


@pytest.mark.parametrize(
    ("sql", "kind", "read_only"),
    [
        ("SELECT 1", "SELECT", True),
        ("  -- c\n with x as (select 1) select * from x", "WITH", True),
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "WITH", False),
        ("SELECT * INTO backup FROM t", "SELECT", False),
        ("SELECT replace(name, 'a', 'b'), updated FROM t", "SELECT", True),
        ("INSERT INTO t VALUES (1)", "INSERT", False),
        ("UPDATE t SET a = 1", "UPDATE", False),
        ("DELETE FROM t", "DELETE", False),
        ("CREATE TABLE t (a int)", "CREATE", False),
    ],
)
def test_statement_kind_and_read_only(sql: str, kind: str, read_only: bool) -> None:
    assert statement_kind(sql) == kind
    assert is_read_only_select(sql) is read_only


# -- property: no literal survives ---------------------------------------------------------------------

TEMPLATE = "SELECT name FROM accounts WHERE a = {0} AND b IN ({0}, {1}) AND c > {1} ORDER BY name"


def _sql_string(value: str) -> str:
    """A string literal the SQL-standard way (quote doubled), as PostgreSQL and SQLite read it."""
    return "'" + value.replace("'", "''") + "'"


def _mysql_string(value: str) -> str:
    """A string literal with backslash escapes, as MySQL/MariaDB read it (and PostgreSQL's E'')."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_tricky = st.text(alphabet=st.sampled_from("ab'\\\"` -;()$:?%/*#\n"), max_size=12)
numbers = st.one_of(st.integers().map(str), st.floats(allow_nan=False, allow_infinity=False).map(repr))
standard_literals = st.one_of(
    numbers,
    st.text(max_size=30).map(_sql_string),
    _tricky.map(_sql_string),
    _tricky.map(lambda v: "E" + _mysql_string(v)),
)
mysql_literals = st.one_of(numbers, st.text(max_size=30).map(_mysql_string), _tricky.map(_mysql_string))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.tuples(standard_literals, standard_literals), st.tuples(mysql_literals, mysql_literals)))
def test_random_literals_never_survive(pair: tuple[str, str]) -> None:
    """Whatever the literals (one quoting convention per statement, as in real SQL), the fingerprint is
    the one of the statement with `?` in their place."""
    expected = normalize(TEMPLATE.format("?", "?"))
    assert normalize(TEMPLATE.format(*pair)) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(), min_size=1, max_size=40), st.lists(st.text(max_size=8), min_size=1, max_size=40)
)
def test_in_lists_and_values_collapse_whatever_the_length(numbers: list[int], words: list[str]) -> None:
    in_list = "SELECT * FROM t WHERE a IN ({})".format(", ".join(map(str, numbers)))
    assert normalize(in_list) == "SELECT * FROM t WHERE a IN (?)"
    rows = ", ".join(f"({n}, {_sql_string(w)})" for n, w in zip(numbers, words, strict=False))
    assert normalize(f"INSERT INTO t (a, b) VALUES {rows}") == "INSERT INTO t(a, b) VALUES (?, ?)"
