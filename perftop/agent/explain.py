"""EXPLAIN statements per dialect, and advice read from the plans the databases return.

Pure functions over plain data (the plan as the database returned it, the statement text, and
optionally the catalog of the tables involved), so they are testable on real plans without a
connection. Standard library only.

Advice (each `{"kind", "table", "columns", "message", "sql"}`):
- `missing_index`: a sequential/full scan with a filter (PostgreSQL `Seq Scan` + `Filter`, MySQL/MariaDB
  `access_type: ALL` + `attached_condition`, SQLite `SCAN t` + the statement's WHERE, or SQLite's
  per-execution `AUTOMATIC` index) -> CREATE INDEX on the filtered columns, equality columns first;
- `nested_loop`: a nested loop whose inner side scans a whole table for each outer row -> index on the
  join columns;
- `join_filter`: a PostgreSQL hash/merge join whose Join Filter drops most joined rows -> index on the
  filtered columns of the table scanned whole under it;
- `join_scan`: a PostgreSQL hash/merge join reading a large table whole to match a few rows of the other
  side -> index on its join columns (a nested loop could then look them up);
- `sort_spill` / `hash_spill`: PostgreSQL sort or hash that went to disk -> raise work_mem;
- `order_index`: SQLite `USE TEMP B-TREE FOR ORDER BY` -> index matching the WHERE equalities + ORDER BY;
- `stale_statistics` (ANALYZE plans only): estimated and actual rows differ by more than 10x -> ANALYZE.
Nodes that use an index give no index advice, and no index is suggested that an existing index (from
the catalog) already provides.

Values: advice is read from the plan as the database returned it, but its text quotes plan expressions
with their literals redacted (unless the app opted in with keep_values), and `redact_plan` gives the
plan to show, with the literal values of every string field replaced by `?`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from perftop.agent.fingerprint import KEYWORDS, QUOTED, WORD, redact_sql, significant

Catalog = Mapping[str, Mapping[str, Any]]
"""table -> {"columns": [names], "indexes": [[column names], ...]} (primary key included)."""

MISESTIMATE_FACTOR = 10.0
MISESTIMATE_MIN_ROWS = 100
NESTED_LOOP_MIN_ROWS = 1000
PG_MIN_SCAN_COST = 20.0
"""PostgreSQL scans cheaper than this (a page or two) get no index advice: the planner would scan anyway."""
MYSQL_MIN_SCAN_ROWS = 20
JOIN_SCAN_MIN_ROWS = 10000
"""A join input read whole gets index advice from this many rows up..."""
JOIN_SCAN_RATIO = 20
"""...when the other side has at least this many times fewer rows."""
_NOT_COLUMNS = frozenset({"subplan", "initplan", "hashed", "any", "all", "some", "array", "row"})

_MYSQL = ("mysql", "mariadb")


# -- EXPLAIN statements ----------------------------------------------------------------------------------


def explain_sql(
    dialect: str, statement: str, analyze: bool, mariadb: bool, timeout_s: float
) -> tuple[str, bool]:
    """The EXPLAIN statement to run for `statement`, and whether it is an ANALYZE (which runs it).

    PostgreSQL: `EXPLAIN (FORMAT JSON)`, or `(ANALYZE, BUFFERS, FORMAT JSON)`; its timeout is set by the
    caller (SET LOCAL statement_timeout). MariaDB: `EXPLAIN FORMAT=JSON` / `ANALYZE FORMAT=JSON` under
    `SET STATEMENT max_statement_time`. MySQL: `EXPLAIN FORMAT=JSON` / `EXPLAIN ANALYZE` (text).
    SQLite: `EXPLAIN QUERY PLAN` (SQLite has no ANALYZE form: the plan is always the estimated one).
    """
    body = statement.strip().rstrip(";").rstrip()
    if dialect == "postgresql":
        if analyze:
            return "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + body, True
        return "EXPLAIN (FORMAT JSON) " + body, False
    if dialect in _MYSQL:
        if mariadb:
            verb = "ANALYZE FORMAT=JSON " if analyze else "EXPLAIN FORMAT=JSON "
            return f"SET STATEMENT max_statement_time={max(timeout_s, 0.001):g} FOR {verb}{body}", analyze
        return ("EXPLAIN ANALYZE " if analyze else "EXPLAIN FORMAT=JSON ") + body, analyze
    if dialect == "sqlite":
        return "EXPLAIN QUERY PLAN " + body, False
    return "EXPLAIN " + body, False


def plan_from_rows(dialect: str, keys: Sequence[str], rows: Sequence[Sequence[Any]]) -> Any:
    """The plan as the database returned it: PostgreSQL's and MySQL's JSON documents (decoded when the
    driver returned text), SQLite's EXPLAIN QUERY PLAN rows as dicts, anything else as row dicts."""
    if dialect == "postgresql" and rows and rows[0]:
        value = rows[0][0]
        return json.loads(value) if isinstance(value, str) else value
    if dialect in _MYSQL and len(rows) == 1 and len(rows[0]) == 1 and isinstance(rows[0][0], str):
        try:
            return json.loads(rows[0][0])
        except ValueError:
            return rows[0][0]
    return [dict(zip(keys, row, strict=False)) for row in rows]


# -- reading SQL -----------------------------------------------------------------------------------------


def _ident(kind: int, text: str) -> str | None:
    """The name an identifier token stands for, or None if the token is not an identifier."""
    if kind == WORD:
        return None if text.upper() in KEYWORDS else text
    if kind == QUOTED and len(text) >= 2:
        q = text[0]
        return text[1:-1].replace(q + q, q)
    return None


def _read_path(tokens: Sequence[tuple[int, str]], i: int) -> tuple[list[str], int]:
    """The dotted identifier path at tokens[i] (`a`, `t.a`, `db.t.a`), and the index after it."""
    first = _ident(*tokens[i])
    if first is None:
        return [], i
    path = [first]
    j = i + 1
    while j + 1 < len(tokens) and tokens[j][1] == "." and (name := _ident(*tokens[j + 1])) is not None:
        path.append(name)
        j += 2
    return path, j


ColumnRef = tuple[str | None, str, bool]
"""(qualifier: table or alias, or None; column; compared for equality)."""


def column_refs(tokens: Sequence[tuple[int, str]]) -> list[ColumnRef]:
    """Column references in an expression's tokens: identifier paths that are not function names, type
    names after `::`, or plan-internal words; each with whether it is compared with `=`, IN or IS."""
    out: list[ColumnRef] = []
    i = 0
    n = len(tokens)
    while i < n:
        prev = tokens[i - 1][1] if i else ""
        path, j = _read_path(tokens, i)
        if not path:
            i += 1
            continue
        nxt = tokens[j][1] if j < n else ""
        if nxt == "(" or prev in ("::", ".") or path[-1].lower() in _NOT_COLUMNS:
            i = j
            continue
        after = nxt.upper()
        equality = after in ("=", "IN", "IS", "<=>") or (prev == "=" and after not in ("+", "-", "*", "/"))
        out.append((path[-2] if len(path) >= 2 else None, path[-1], equality))
        i = j
    return out


def expression_columns(expression: str) -> list[ColumnRef]:
    """Column references in an SQL expression (a plan's Filter, attached_condition, Join Filter...)."""
    return column_refs(significant(expression))


class StatementInfo:
    """What advice needs from a statement: its tables by alias, and the columns its clauses use."""

    def __init__(self) -> None:
        self.tables: dict[str, str] = {}
        """Lower-cased alias or table name -> table name as written."""
        self.where: list[ColumnRef] = []
        self.join: list[ColumnRef] = []
        self.order: list[ColumnRef] = []

    def table_of(self, qualifier: str | None) -> str | None:
        return None if qualifier is None else self.tables.get(qualifier.lower())


_CLAUSES = {
    "SELECT": "select",
    "FROM": "from",
    "JOIN": "from",
    "UPDATE": "from",
    "INTO": "from",
    "ON": "on",
    "WHERE": "where",
    "ORDER": "order",
    "GROUP": "other",
    "HAVING": "other",
    "LIMIT": "other",
    "OFFSET": "other",
    "RETURNING": "other",
    "UNION": "other",
    "INTERSECT": "other",
    "EXCEPT": "other",
    "WINDOW": "other",
    "FETCH": "other",
    "FOR": "other",
    "USING": "other",
    "SET": "other",
    "VALUES": "other",
}
_TABLE_AFTER = frozenset({"FROM", "JOIN", "UPDATE", "INTO", ","})


def parse_statement(statement: str) -> StatementInfo:
    """Tables (with aliases) and the columns of WHERE, ON and ORDER BY clauses, subqueries included."""
    info = StatementInfo()
    tokens = significant(statement)
    levels: list[str] = ["other"]
    expect = ""  # "table" right after FROM, JOIN, UPDATE, INTO or a comma of a FROM list
    i = 0
    n = len(tokens)
    while i < n:
        kind, text = tokens[i]
        upper = text.upper() if kind == WORD else text
        clause = levels[-1]
        if text == "(":
            # A column list or a function's arguments after a table name; otherwise a group or subquery.
            after_name = clause == "from" and i > 0 and _ident(*tokens[i - 1]) is not None
            levels.append("other" if after_name else clause)
            expect = ""
            i += 1
            continue
        if text == ")":
            if len(levels) > 1:
                levels.pop()
            expect = ""
            i += 1
            continue
        if kind == WORD and upper in _CLAUSES:
            levels[-1] = _CLAUSES[upper]
            expect = "table" if upper in _TABLE_AFTER else ""
            i += 1
            continue
        if clause == "from":
            if text == ",":
                expect = "table"
                i += 1
                continue
            if expect == "table":
                path, j = _read_path(tokens, i)
                if path:
                    info.tables.setdefault(path[-1].lower(), path[-1])
                    last_table = path[-1]
                    i = j
                    if i < n and tokens[i][0] == WORD and tokens[i][1].upper() == "AS":
                        i += 1
                    if i < n and (alias := _ident(*tokens[i])) is not None:
                        info.tables[alias.lower()] = last_table
                        i += 1
                    expect = ""
                    continue
            i += 1
            continue
        if clause in ("where", "on", "order"):
            j = i
            while (
                j < n
                and tokens[j][1] not in ("(", ")")
                and not (tokens[j][0] == WORD and tokens[j][1].upper() in _CLAUSES)
            ):
                j += 1
            # The segment with its neighbours, so that `f(` reads as a function and `::t` as a type.
            refs = column_refs(tokens[max(i - 1, 0) : j + 1])
            (info.where if clause == "where" else info.join if clause == "on" else info.order).extend(refs)
            i = j
            continue
        i += 1
    return info


# -- advice ----------------------------------------------------------------------------------------------


def _quote(name: str, dialect: str) -> str:
    simple = re.fullmatch(r"[a-z_][a-z0-9_]*" if dialect == "postgresql" else r"[A-Za-z_][A-Za-z0-9_]*", name)
    if simple and name.upper() not in KEYWORDS:
        return name
    if dialect in _MYSQL:
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def _index_name(table: str, columns: Sequence[str]) -> str:
    raw = "ix_" + "_".join([table, *columns])
    return re.sub(r"[^A-Za-z0-9_]", "_", raw).lower()[:60]


class _Advisor:
    """Collects advice for one plan: resolves aliases and columns, skips what an index already covers."""

    def __init__(self, dialect: str, statement: str, catalog: Catalog | None, keep_values: bool) -> None:
        self.dialect = dialect
        self.keep_values = keep_values
        self.info = parse_statement(statement)
        self.catalog = catalog or {}
        self.out: list[dict[str, Any]] = []
        self._seen: set[tuple[str, str | None, tuple[str, ...]]] = set()

    def shown(self, expression: Any) -> str:
        """A plan expression as advice text may quote it: its literal values redacted."""
        text = str(expression)
        return text if self.keep_values else redact_sql(text, self.dialect in _MYSQL)

    def real_table(self, name: str) -> str:
        """A plan's table name or alias -> the table's name (via the statement's aliases)."""
        return self.info.tables.get(name.lower(), name)

    def owner(self, qualifier: str | None, column: str) -> str | None:
        """The table a column reference belongs to: by its qualifier, else the statement's only table,
        else the one table whose catalog has that column."""
        if qualifier is not None:
            return self.info.table_of(qualifier)
        tables = set(self.info.tables.values())
        if len(tables) == 1:
            return tables.pop()
        owners = [
            t
            for t in tables
            if (meta := self._table_meta(t)) and column.lower() in {c.lower() for c in meta["columns"]}
        ]
        return owners[0] if len(owners) == 1 else None

    def _table_meta(self, table: str) -> Mapping[str, Any] | None:
        meta = self.catalog.get(table)
        if meta is None:
            for key, value in self.catalog.items():
                if key.lower() == table.lower():
                    return value
        return meta

    def columns_for(
        self, table: str, alias: str | None, refs: Sequence[ColumnRef], scanned: bool = False
    ) -> list[str]:
        """Columns of `table` among `refs`, equality ones first, each once, spelled as in the catalog.
        `scanned`: the refs are a condition of a scan of `table` itself, whose unqualified columns are its
        own (PostgreSQL writes a scan's Filter without qualifiers)."""
        names = {table.lower()} | ({alias.lower()} if alias else set())
        meta = self._table_meta(table)
        known = {c.lower(): c for c in meta["columns"]} if meta else None
        single = scanned or len(set(self.info.tables.values())) <= 1
        picked: list[tuple[bool, str]] = []
        for qualifier, column, equality in refs:
            if qualifier is not None:
                if qualifier.lower() not in names and self.info.table_of(qualifier) != table:
                    continue
            elif known is None and not single:
                continue  # unqualified, several tables, no catalog: cannot tell whose column it is
            if known is not None:
                if column.lower() not in known:
                    continue
                column = known[column.lower()]
            picked.append((not equality, column))
        seen: set[str] = set()
        ordered: list[str] = []
        for _, column in sorted(picked, key=lambda p: p[0]):
            if column.lower() not in seen:
                seen.add(column.lower())
                ordered.append(column)
        return ordered

    def indexed(self, table: str, columns: Sequence[str]) -> bool:
        """Whether an existing index starts with exactly these columns (in any order)."""
        meta = self._table_meta(table)
        if not meta:
            return False
        want = {c.lower() for c in columns}
        for index in meta.get("indexes", []):
            lead = [c.lower() for c in index[: len(columns)]]
            if len(lead) == len(want) and set(lead) == want:
                return True
        return False

    def add(
        self, kind: str, table: str | None, columns: Sequence[str], message: str, sql: str | None
    ) -> None:
        key = (
            kind if kind in ("sort_spill", "hash_spill", "stale_statistics") else "index",
            table,
            tuple(columns),
        )
        if key in self._seen:
            return
        self._seen.add(key)
        self.out.append(
            {"kind": kind, "table": table, "columns": list(columns), "message": message, "sql": sql}
        )

    def add_index(self, kind: str, table: str, columns: Sequence[str], why: str) -> None:
        if not columns or self.indexed(table, columns):
            return
        cols_sql = ", ".join(_quote(c, self.dialect) for c in columns)
        sql = f"CREATE INDEX {_index_name(table, columns)} ON {_quote(table, self.dialect)} ({cols_sql})"
        self.add(
            kind,
            table,
            columns,
            f"{why}; an index on {table}({', '.join(columns)}) lets it look rows up",
            sql,
        )

    def add_stale(self, table: str, estimated: float, actual: float) -> None:
        high, low = max(estimated, actual), max(min(estimated, actual), 1.0)
        if high < MISESTIMATE_MIN_ROWS or high / low <= MISESTIMATE_FACTOR:
            return
        verb = "ANALYZE TABLE" if self.dialect in _MYSQL else "ANALYZE"
        self.add(
            "stale_statistics",
            table,
            [],
            f"the planner estimated {estimated:g} rows of {table} but got {actual:g}: its statistics are off",
            f"{verb} {_quote(table, self.dialect)}",
        )


def advise(
    dialect: str,
    plan: Any,
    statement: str,
    catalog: Catalog | None = None,
    analyzed: bool = False,
    keep_values: bool = False,
) -> list[dict[str, Any]]:
    """Advice for one plan of `statement` (see the module docstring); [] when the plan looks fine.

    `plan` and `statement` are the unredacted ones (advice needs the names in them); the text of the
    advice quotes expressions with their values redacted unless `keep_values`."""
    advisor = _Advisor(dialect, statement, catalog, keep_values)
    if dialect == "postgresql":
        for node in _pg_nodes(plan):
            _pg_node(advisor, node, analyzed)
    elif dialect in _MYSQL:
        _mysql(advisor, plan, analyzed)
    elif dialect == "sqlite":
        _sqlite(advisor, plan)
    return advisor.out


def plan_tables(dialect: str, plan: Any, statement: str) -> list[str]:
    """Tables whose catalog the advice can use: those the statement names (aliases resolved) and, for
    PostgreSQL, every relation of the plan."""
    tables = set(parse_statement(statement).tables.values())
    if dialect == "postgresql":
        tables.update(str(node["Relation Name"]) for node in _pg_nodes(plan) if "Relation Name" in node)
    return sorted(tables)


# -- redacting a plan ------------------------------------------------------------------------------------

_PLAN_KEPT_KEYS = frozenset(
    {
        # PostgreSQL: names and enumerations, never values
        "Node Type",
        "Relation Name",
        "Schema",
        "Alias",
        "Index Name",
        "Parent Relationship",
        "Subplan Name",
        "Strategy",
        "Partial Mode",
        "Join Type",
        "Scan Direction",
        "Sort Method",
        "Sort Space Type",
        "CTE Name",
        "Function Name",
        "Operation",
        "Command",
        # MySQL / MariaDB: names, access types and the cost figures MySQL writes as strings
        "table_name",
        "access_type",
        "key",
        "possible_keys",
        "used_key_parts",
        "key_length",
        "select_type",
        "query_cost",
        "read_cost",
        "eval_cost",
        "prefix_cost",
        "sort_cost",
        "data_read_per_join",
        "buffer_type",
        "buffer_size",
        "r_buffer_size",
        "join_type",
    }
)


def redact_plan(dialect: str, plan: Any) -> Any:
    """A copy of `plan` with the literal values of every string field replaced by `?` (see
    `redact_sql`): PostgreSQL's Filter, Index Cond, Recheck Cond, Hash Cond, Join Filter, Output, Sort
    Key...; MariaDB's attached_condition and the rest; SQLite's detail; MySQL's EXPLAIN ANALYZE text.
    Fields that only ever hold names (Relation Name, Index Name, table_name, key...) are kept as is.
    SQLite's details never hold values, only names and subquery numbers, which are kept."""
    double_quoted = dialect in _MYSQL
    numbers = dialect != "sqlite"
    if isinstance(plan, str) and dialect in _MYSQL:
        return _redact_mysql_tree(plan)

    def walk(value: Any, kept: bool) -> Any:
        if isinstance(value, str):
            return value if kept else redact_sql(value, double_quoted, numbers)
        if isinstance(value, dict):
            return {k: walk(v, k in _PLAN_KEPT_KEYS) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, kept) for v in value]
        return value

    return walk(plan, False)


_MYSQL_FIGURES = re.compile(
    r"((?:\s+\((?:cost=[\d.e+]+ rows=[\d.e+]+|rows=[\d.e+]+|actual time=[\d.e+]+ rows=[\d.e+]+ loops=\d+"
    r"|actual rows=[\d.e+]+ loops=\d+|never executed)\))*\s*)$"
)
"""The measured figures at the end of a MySQL EXPLAIN ANALYZE line: `(cost=0.35 rows=1) (actual ...)`."""


def _redact_mysql_tree(text: str) -> str:
    """MySQL's EXPLAIN ANALYZE tree: each line's expression redacted, its cost and timing figures kept."""
    lines = []
    for line in text.split("\n"):
        figures = _MYSQL_FIGURES.search(line)
        cut = figures.start() if figures else len(line)
        lines.append(redact_sql(line[:cut], True) + line[cut:])
    return "\n".join(lines)


# PostgreSQL -------------------------------------------------------------------------------------------


def _pg_nodes(plan: Any) -> Iterator[dict[str, Any]]:
    """Every node of a FORMAT JSON plan, parents before children."""
    stack: list[Any] = []
    if isinstance(plan, list):
        stack.extend(reversed([p.get("Plan") for p in plan if isinstance(p, dict)]))
    elif isinstance(plan, dict):
        stack.append(plan.get("Plan", plan))
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        yield node
        children = node.get("Plans")
        if isinstance(children, list):
            stack.extend(reversed(children))


def _pg_rows(node: Mapping[str, Any], analyzed: bool) -> float:
    if analyzed and "Actual Rows" in node:
        return float(node["Actual Rows"]) * float(node.get("Actual Loops", 1) or 1)
    return float(node.get("Plan Rows", 0))


def _pg_node(advisor: _Advisor, node: Mapping[str, Any], analyzed: bool) -> None:
    node_type = node.get("Node Type")
    relation = node.get("Relation Name")
    if node_type == "Nested Loop":
        children = node.get("Plans") or []
        if len(children) == 2:
            outer, inner = children
            while inner.get("Node Type") == "Materialize" and inner.get("Plans"):
                inner = inner["Plans"][0]
            outer_rows = _pg_rows(outer, analyzed)
            inner_rel = inner.get("Relation Name")
            if inner.get("Node Type") == "Seq Scan" and inner_rel and outer_rows >= NESTED_LOOP_MIN_ROWS:
                refs = expression_columns(str(node.get("Join Filter", ""))) + expression_columns(
                    str(inner.get("Filter", ""))
                )
                columns = advisor.columns_for(inner_rel, inner.get("Alias"), refs)
                advisor.add_index(
                    "nested_loop",
                    inner_rel,
                    columns,
                    f"a nested loop scans all of {inner_rel} for each of ~{outer_rows:.0f} outer rows",
                )
    elif node_type in ("Hash Join", "Merge Join"):
        _pg_join(advisor, node, analyzed)
    elif node_type == "Seq Scan" and relation and "Filter" in node:
        if float(node.get("Total Cost", PG_MIN_SCAN_COST)) >= PG_MIN_SCAN_COST:
            columns = advisor.columns_for(
                relation, node.get("Alias"), expression_columns(str(node["Filter"])), scanned=True
            )
            advisor.add_index(
                "missing_index",
                relation,
                columns,
                f"a sequential scan of {relation} filters on {advisor.shown(node['Filter'])}",
            )
    elif node_type == "Sort" and (
        node.get("Sort Space Type") == "Disk" or "external" in str(node.get("Sort Method", ""))
    ):
        used_kb = float(node.get("Sort Space Used", 0) or 0)
        mb = max(4, math.ceil(used_kb * 4 / 1024))
        keys = [advisor.shown(k) for k in node.get("Sort Key", [])]
        advisor.add(
            "sort_spill",
            None,
            keys,
            f"a sort ({', '.join(keys)}) spilled {used_kb:.0f} kB to disk ({node.get('Sort Method')}); "
            "raise work_mem so it sorts in memory",
            f"SET work_mem = '{mb}MB'",
        )
    elif node_type == "Hash" and int(node.get("Hash Batches", 1) or 1) > 1:
        advisor.add(
            "hash_spill",
            None,
            [],
            f"a hash split into {node.get('Hash Batches')} batches on disk; raise work_mem",
            "SET work_mem = '64MB'",
        )
    if analyzed and relation and "Actual Rows" in node and "Plan Rows" in node:
        advisor.add_stale(str(relation), float(node["Plan Rows"]), float(node["Actual Rows"]))


def _pg_scanned(node: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The Seq Scan under a join input (through Hash, Materialize and Sort nodes), or None."""
    while node.get("Node Type") in ("Hash", "Materialize", "Sort") and node.get("Plans"):
        node = node["Plans"][0]
    return node if node.get("Node Type") == "Seq Scan" and node.get("Relation Name") else None


def _pg_join(advisor: _Advisor, node: Mapping[str, Any], analyzed: bool) -> None:
    """Hash and merge joins: a join filter that throws most of the joined rows away, and a large table read
    whole to be matched against a few rows of the other side (an index on its join columns would let a
    nested loop look those few up)."""
    children = [c for c in node.get("Plans") or [] if isinstance(c, Mapping)]
    if len(children) != 2:
        return
    condition = str(node.get("Hash Cond") or node.get("Merge Cond") or "")
    removed = float(node.get("Rows Removed by Join Filter", 0) or 0)
    kept = _pg_rows(node, analyzed)
    if node.get("Join Filter") and (removed >= NESTED_LOOP_MIN_ROWS or (not analyzed and kept == 0)):
        refs = expression_columns(str(node["Join Filter"]))
        for child in children:
            scan = _pg_scanned(child)
            if scan is None:
                continue
            columns = advisor.columns_for(str(scan["Relation Name"]), scan.get("Alias"), refs)
            advisor.add_index(
                "join_filter",
                str(scan["Relation Name"]),
                columns,
                f"a {node.get('Node Type', 'join').lower()} joins all of {scan['Relation Name']} and then "
                f"its filter {advisor.shown(node['Join Filter'])} drops {removed:,.0f} of the joined rows "
                "(a condition on one table that an OR or a function keeps out of its scan)",
            )
    sizes = [_pg_rows(c, analyzed) for c in children]
    for i, child in enumerate(children):
        scan = _pg_scanned(child)
        big, small = sizes[i], sizes[1 - i]
        if scan is None or big < JOIN_SCAN_MIN_ROWS or small * JOIN_SCAN_RATIO > big:
            continue
        table = str(scan["Relation Name"])
        columns = advisor.columns_for(table, scan.get("Alias"), expression_columns(condition))
        advisor.add_index(
            "join_scan",
            table,
            columns,
            f"a {node.get('Node Type', 'join').lower()} reads all ~{big:,.0f} rows of {table} to match "
            f"~{small:,.0f} rows on {advisor.shown(condition)}",
        )


# MySQL / MariaDB --------------------------------------------------------------------------------------


def _mysql(advisor: _Advisor, value: Any, analyzed: bool) -> None:
    """Walk EXPLAIN FORMAT=JSON: every `table` object, a block-nl-join's with the join's condition."""
    if isinstance(value, list):
        for item in value:
            _mysql(advisor, item, analyzed)
        return
    if not isinstance(value, dict):
        return
    for key, child in value.items():
        if key == "block-nl-join" and isinstance(child, dict):
            inner = child.get("table")
            if isinstance(inner, dict) and "table_name" in inner:
                _mysql_table(advisor, inner, child.get("attached_condition"), analyzed)
                _mysql(advisor, inner, analyzed)  # subqueries materialized under it
        elif key == "table" and isinstance(child, dict) and "table_name" in child:
            _mysql_table(advisor, child, None, analyzed)
            _mysql(advisor, child, analyzed)
        else:
            _mysql(advisor, child, analyzed)


def _mysql_table(advisor: _Advisor, table: Mapping[str, Any], join_condition: Any, analyzed: bool) -> None:
    alias = str(table["table_name"])
    real = advisor.real_table(alias)
    rows = float(table.get("rows", 0) or 0)
    if table.get("access_type") == "ALL" and rows >= MYSQL_MIN_SCAN_ROWS:
        own = expression_columns(str(table.get("attached_condition", "")))
        joined = expression_columns(str(join_condition)) if join_condition else []
        join_cols = advisor.columns_for(real, alias, joined)
        if join_cols:
            advisor.add_index(
                "nested_loop",
                real,
                join_cols,
                f"a block nested loop scans all ~{rows:.0f} rows of {real} per batch",
            )
        columns = advisor.columns_for(real, alias, own)
        condition = advisor.shown(table.get("attached_condition"))
        advisor.add_index(
            "missing_index",
            real,
            columns,
            f"a full scan of {real} (~{rows:.0f} rows) filters on {condition}",
        )
    if analyzed and "r_rows" in table and "rows" in table:
        loops = float(table.get("r_loops", 1) or 1)
        actual = float(table["r_rows"] or 0) * max(loops, 1.0)
        advisor.add_stale(real, rows * max(loops, 1.0), actual)


# SQLite -----------------------------------------------------------------------------------------------

_SQLITE_SCAN = re.compile(r"^SCAN (?:TABLE )?(\S+)(?: AS (\S+))?(.*)$")
_SQLITE_AUTOMATIC = re.compile(r"^SEARCH (?:TABLE )?(\S+)(?: AS (\S+))? USING AUTOMATIC .*INDEX \((.*)\)")


def _sqlite(advisor: _Advisor, plan: Any) -> None:
    """Walk EXPLAIN QUERY PLAN rows: SCAN without index, AUTOMATIC indexes, temp B-trees for ORDER BY."""
    if not isinstance(plan, list):
        return
    info = advisor.info
    first_loop: dict[Any, Any] = {}
    for row in plan:
        if not isinstance(row, dict):
            continue
        detail = str(row.get("detail", ""))
        parent = row.get("parent")
        is_loop = detail.startswith(("SCAN ", "SEARCH "))
        inner = is_loop and first_loop.setdefault(parent, row.get("id")) != row.get("id")
        scan = _SQLITE_SCAN.match(detail)
        if scan and "INDEX" not in scan.group(3) and not scan.group(1).startswith(("(", "CONSTANT")):
            name = scan.group(2) or scan.group(1)
            real = advisor.real_table(name)
            if inner:
                join_cols = advisor.columns_for(real, name, info.join + info.where)
                advisor.add_index(
                    "nested_loop", real, join_cols, f"a nested loop scans all of {real} for each outer row"
                )
            columns = advisor.columns_for(real, name, info.where)
            advisor.add_index("missing_index", real, columns, f"SQLite scans all of {real} to filter it")
            continue
        auto = _SQLITE_AUTOMATIC.match(detail)
        if auto:
            name = auto.group(2) or auto.group(1)
            real = advisor.real_table(name)
            # `(a=? AND b>?)`: columns of this very table, so qualify them with its name.
            refs = [(name, c, eq) for _, c, eq in expression_columns(auto.group(3).replace("=?", " = ?"))]
            columns = advisor.columns_for(real, name, refs)
            advisor.add_index(
                "missing_index",
                real,
                columns,
                f"SQLite builds a temporary index on {real} at every execution",
            )
            continue
        if detail.startswith("USE TEMP B-TREE FOR ORDER BY"):
            tables = {advisor.owner(q, c) for q, c, _ in info.order}
            if len(tables) == 1 and (table := tables.pop()) is not None:
                order = advisor.columns_for(table, None, [(q, c, False) for q, c, _ in info.order])
                eq = advisor.columns_for(table, None, [r for r in info.where if r[2]])
                if order:
                    advisor.add_index(
                        "order_index",
                        table,
                        [c for c in eq if c not in order] + order,
                        f"SQLite sorts the rows of {table} in a temporary B-tree",
                    )
