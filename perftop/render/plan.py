"""Query plans as an indented tree a person can read, for the TUI's EXPLAIN view and the CLI's text.

Each database returns its plan in its own shape (PostgreSQL: FORMAT JSON nodes; MariaDB/MySQL: FORMAT=JSON
query blocks, or MySQL's EXPLAIN ANALYZE text; SQLite: EXPLAIN QUERY PLAN rows with parents). `plan_lines`
turns any of them into `PlanLine`s: one per node, indented by depth, with the figures that tell where the
time goes (estimated against actual rows, loops, time, rows removed by a filter, buffers) and the node's
conditions beneath it. A node is `hot` when it alone takes a large share of the query's time (of its cost,
without ANALYZE), as explain.depesz.com and pgMustard highlight them, and `warn` names what is wrong with it
(a full scan, a sort on disk, a row estimate off by 10x or more). No Textual here: the TUI styles the lines.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

NO_ADVICE = "nothing to suggest: the plan uses indexes where it filters and joins"
NO_ADVICE_BUT_WARNINGS = "no index to suggest; the plan's warnings (!) say what else to look at"
HOT_SHARE = 0.3
"""A node is hot when it alone takes this share of the query's time (or cost)."""
ESTIMATE_MISS = 10.0
"""Actual rows this many times more (or fewer) than estimated: the planner's statistics are off."""


@dataclass(frozen=True)
class PlanLine:
    """One node of a plan: its headline, the details shown under it, and how much it matters."""

    depth: int
    text: str
    details: tuple[str, ...] = ()
    share: float | None = None
    """The node's own share (0..1) of the query's time, or of its cost without ANALYZE; None if unknown."""
    warn: tuple[str, ...] = field(default=())

    @property
    def hot(self) -> bool:
        return self.share is not None and self.share >= HOT_SHARE


def plan_lines(dialect: str, plan: Any) -> list[PlanLine]:
    """The plan as a tree of lines; a plan of an unknown shape comes back as its text, one line a line."""
    try:
        if dialect == "postgresql" and isinstance(plan, list) and plan and isinstance(plan[0], Mapping):
            return _postgresql(plan[0])
        if dialect in ("mysql", "mariadb") and isinstance(plan, Mapping):
            return list(_mysql(plan.get("query_block", plan), 0))
        if dialect == "sqlite" and isinstance(plan, list):
            return _sqlite(plan)
    except (TypeError, ValueError, KeyError, AttributeError):
        pass
    text = plan if isinstance(plan, str) else repr(plan)
    return [PlanLine(0, line) for line in text.splitlines() if line.strip()]


def plan_text(dialect: str, plan: Any) -> str:
    """The tree as plain text (the CLI's `perftop action ... explain`): hot nodes marked `>>`, warnings `!`"""
    out: list[str] = []
    for line in plan_lines(dialect, plan):
        indent = "  " * line.depth
        mark = ">> " if line.hot else "-> " if line.depth else ""
        share = f"  [{line.share:.0%}]" if line.share is not None and line.share >= 0.05 else ""
        out.append(f"{indent}{mark}{line.text}{share}")
        out.extend(f"{indent}     {d}" for d in line.details)
        out.extend(f"{indent}     ! {w}" for w in line.warn)
    return "\n".join(out)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _count(value: float) -> str:
    return f"{value:,.0f}"


def _ms(value: float) -> str:
    return f"{value:.3f} ms" if value < 1 else f"{value:,.1f} ms"


# -- PostgreSQL ----------------------------------------------------------------------------------------------

_PG_CONDITIONS = (
    "Hash Cond",
    "Merge Cond",
    "Join Filter",
    "Index Cond",
    "Recheck Cond",
    "Filter",
    "Sort Key",
    "Group Key",
)


def _pg_total(node: Mapping[str, Any], analyzed: bool) -> float:
    """A node's inclusive time (all loops), or its total cost without ANALYZE."""
    if analyzed:
        return (_num(node.get("Actual Total Time")) or 0.0) * (_num(node.get("Actual Loops")) or 1.0)
    return _num(node.get("Total Cost")) or 0.0


def _postgresql(top: Mapping[str, Any]) -> list[PlanLine]:
    root = top.get("Plan")
    if not isinstance(root, Mapping):
        raise ValueError("no Plan")
    analyzed = "Actual Total Time" in root
    whole = _pg_total(root, analyzed) or 1.0
    lines: list[PlanLine] = []

    def walk(node: Mapping[str, Any], depth: int, limited: bool) -> None:
        children = [c for c in node.get("Plans") or () if isinstance(c, Mapping)]
        own = max(0.0, _pg_total(node, analyzed) - sum(_pg_total(c, analyzed) for c in children))
        lines.append(_pg_line(node, depth, own / whole, analyzed, limited))
        limited = limited or node.get("Node Type") == "Limit"
        for child in children:
            walk(child, depth + 1, limited)

    walk(root, 0, False)
    footer = [
        f"{key.lower()}: {_ms(value)}"
        for key in ("Planning Time", "Execution Time")
        if (value := _num(top.get(key))) is not None
    ]
    if footer:
        lines.append(PlanLine(0, ", ".join(footer)))
    return lines


def _pg_value(value: Any) -> str:
    """A condition or key list as PostgreSQL prints it in text plans (Sort Key lists joined by commas)."""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _pg_line(
    node: Mapping[str, Any], depth: int, share: float, analyzed: bool, limited: bool = False
) -> PlanLine:
    """One node; `limited`: under a Limit, whose early stop makes fewer actual rows than estimated normal."""
    kind = str(node.get("Node Type", "?"))
    if (node.get("Join Type") and "Join" in kind) or kind == "Nested Loop":
        kind = f"{node.get('Join Type', '')} {kind}".strip()
    where = ""
    if node.get("Relation Name"):
        alias = node.get("Alias")
        where = f" on {node['Relation Name']}" + (
            f" {alias}" if alias and alias != node["Relation Name"] else ""
        )
    if node.get("Index Name"):
        where += f" using {node['Index Name']}"
    estimated = _num(node.get("Plan Rows")) or 0.0
    figures = [f"est {_count(estimated)} rows"]
    warn: list[str] = []
    if analyzed:
        loops = _num(node.get("Actual Loops")) or 1.0
        actual = _num(node.get("Actual Rows")) or 0.0
        figures.append(f"actual {_count(actual)}" + (f" x{_count(loops)} loops" if loops > 1 else ""))
        figures.append(_ms((_num(node.get("Actual Total Time")) or 0.0) * loops))
        high, low = max(estimated, actual), max(1.0, min(estimated, actual))
        stopped_early = limited and actual < estimated
        if high / low >= ESTIMATE_MISS and high >= 100 and not stopped_early:
            warn.append(f"row estimate off {high / low:,.0f}x (stale statistics? run ANALYZE)")
    else:
        figures.append(f"cost {_num(node.get('Total Cost')) or 0.0:,.1f}")
    details = [f"{key}: {_pg_value(node[key])}" for key in _PG_CONDITIONS if node.get(key)]
    removed = _num(node.get("Rows Removed by Filter")) or _num(node.get("Rows Removed by Join Filter"))
    if removed:
        details.append(f"rows removed by filter: {_count(removed)}")
    hit, read = _num(node.get("Shared Hit Blocks")), _num(node.get("Shared Read Blocks"))
    if hit or read:
        details.append(f"buffers: hit {_count(hit or 0)} read {_count(read or 0)}")
    if node.get("Sort Method"):
        space = f" {node.get('Sort Space Used', '?')} kB {node.get('Sort Space Type', '')}".rstrip()
        details.append(f"sort: {node['Sort Method']}{space}")
        if node.get("Sort Space Type") == "Disk":
            warn.append("sort spilled to disk (raise work_mem, or an index on the sort key)")
    if kind == "Seq Scan" and removed and removed > 1000:
        warn.append(f"full scan keeping few of its rows ({_count(removed)} removed): an index may help")
    return PlanLine(depth, f"{kind}{where}  ({', '.join(figures)})", tuple(details), share, tuple(warn))


# -- MariaDB / MySQL FORMAT=JSON ----------------------------------------------------------------------------

_MYSQL_WRAPPERS = (
    "filesort",
    "temporary_table",
    "read_sorted_file",
    "duplicates_removal",
    "having_condition",
    "materialized",
    "query_specifications",
    "union_result",
    "subqueries",
    "block-nl-join",
    "nested_loop",
    "query_block",
    "ordering_operation",
    "grouping_operation",
)


def _mysql_own_ms(node: Mapping[str, Any]) -> float | None:
    """A node's own time under ANALYZE: a table's reading and checking, a join buffer's unpacking."""
    parts = [_num(node.get(k)) for k in ("r_table_time_ms", "r_other_time_ms", "r_unpack_time_ms")]
    known = [p for p in parts if p is not None]
    return sum(known) if known else None


def _mysql(value: Any, depth: int, total: float | None = None) -> Iterator[PlanLine]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        for item in value:
            yield from _mysql(item, depth, total)
        return
    if not isinstance(value, Mapping):
        return
    if total is None:
        total = _num(value.get("r_total_time_ms"))
    if "table_name" in value:
        yield _mysql_table(value, depth, total)
        return
    for key, child in value.items():
        if key in ("table", "nested_loop", "query_block"):
            yield from _mysql(child, depth, total)
        elif key in _MYSQL_WRAPPERS and isinstance(child, Mapping | Sequence):
            extra = []
            if isinstance(child, Mapping):
                for detail in ("sort_key", "attached_condition", "join_type", "buffer_type", "r_sort_mode"):
                    if child.get(detail):
                        extra.append(f"{detail.replace('_', ' ').removeprefix('r ')}: {child[detail]}")
            own = _mysql_own_ms(child) if isinstance(child, Mapping) else None
            label = key.replace("_", " ") + (f"  ({_ms(own)})" if own is not None else "")
            share = own / total if own is not None and total else None
            yield PlanLine(depth, label, tuple(extra), share)
            yield from _mysql(child, depth + 1, total)


def _mysql_table(table: Mapping[str, Any], depth: int, total: float | None) -> PlanLine:
    access = str(table.get("access_type", "?"))
    key = f" using {table['key']}" if table.get("key") else ""
    estimated = _num(table.get("rows")) or _num(table.get("rows_examined_per_scan")) or 0.0
    figures = [f"est {_count(estimated)} rows"]
    if _num(table.get("filtered")) is not None:
        figures.append(f"filtered {table['filtered']}%")
    actual = _num(table.get("r_rows"))
    if actual is not None:
        figures.append(f"actual {_count(actual)}")
        if _num(table.get("r_filtered")) is not None:
            figures.append(f"kept {table['r_filtered']}%")
    loops = _num(table.get("r_loops"))
    if loops is not None and loops > 1:
        figures.append(f"x{_count(loops)} loops")
    own = _mysql_own_ms(table)
    if own is not None:
        figures.append(_ms(own))
    details = [
        f"{name.replace('_', ' ')}: {table[name]}"
        for name in ("possible_keys", "ref", "attached_condition", "using_index")
        if table.get(name)
    ]
    warn = ["full table scan"] if access == "ALL" else []
    high = max(actual or 0.0, estimated)
    if actual is not None and high / max(1.0, min(actual, estimated)) >= ESTIMATE_MISS and high >= 100:
        warn.append("row estimate off 10x or more (stale statistics? run ANALYZE TABLE)")
    kinds = {"ALL": "full scan", "index": "full index scan", "range": "range scan", "ref": "index lookup"}
    share = own / total if own is not None and total else None
    text = f"{kinds.get(access, access)} on {table['table_name']}{key}  ({', '.join(figures)})"
    return PlanLine(depth, text, tuple(details), share, tuple(warn))


# -- SQLite EXPLAIN QUERY PLAN ------------------------------------------------------------------------------


def _sqlite(rows: list[Any]) -> list[PlanLine]:
    children: dict[int, list[Mapping[str, Any]]] = {}
    for row in rows:
        if isinstance(row, Mapping):
            children.setdefault(int(row.get("parent", 0)), []).append(row)
    lines: list[PlanLine] = []

    def walk(parent: int, depth: int) -> None:
        for row in children.get(parent, ()):
            detail = str(row.get("detail", ""))
            warn = []
            if detail.startswith("SCAN") and "INDEX" not in detail:
                warn.append("full table scan")
            if "TEMP B-TREE" in detail:
                warn.append(
                    "sorts in a temporary b-tree (an index on the ORDER BY/GROUP BY columns avoids it)"
                )
            if "AUTOMATIC" in detail:
                warn.append("SQLite builds a temporary index for this join on every run: create it")
            lines.append(PlanLine(depth, detail, (), None, tuple(warn)))
            node = int(row.get("id", -1))
            if node != parent:
                walk(node, depth + 1)

    walk(0, 0)
    return lines
