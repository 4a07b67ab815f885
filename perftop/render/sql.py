"""Short forms of SQL fingerprints for lists: what tells statements apart, without the column lists.

An ORM's statements start with every column of every table (`SELECT users.id, users.username, ...`), so
the first 40 characters of most fingerprints are columns, and two queries that differ in their WHERE look
the same. `compact_sql` keeps the verb, the tables and joins, WHERE / GROUP BY / HAVING / ORDER BY / LIMIT,
and collapses select lists (`users.… (12 cols)`), insert column and value lists, long join conditions and
subqueries; when that is still wider than the room, it cuts the middle, never the tail. The full
fingerprint stays what identifies a statement (JSON, the detail line, EXPLAIN).
"""

from __future__ import annotations

import re

ELLIPSIS = "…"
LONG_CONDITION = 40
"""A JOIN's ON condition longer than this is shown as `…`."""
_TOKEN = re.compile(r"""\s+|"[^"]*"|`[^`]*`|'(?:[^']|'')*'|\w+|\?|[(),]|[^\s\w(),"'`?]+""")
_CLAUSES = {
    "FROM",
    "WHERE",
    "GROUP",
    "HAVING",
    "ORDER",
    "LIMIT",
    "OFFSET",
    "RETURNING",
    "VALUES",
    "SET",
    "ON",
    "JOIN",
    "UNION",
    "FOR",
}
_JOIN_WORDS = {"LEFT", "RIGHT", "INNER", "OUTER", "FULL", "CROSS", "NATURAL", "LATERAL"}
_SPACED_BEFORE_PAREN = {"IN", "AS", "ON", "VALUES", "AND", "OR", "NOT", "EXISTS", "FROM", "JOIN", "WHERE"}
"""Keywords followed by a space before `(`; a function name is not (`count(*)`)."""


def _tokens(sql: str) -> list[str]:
    """The statement's tokens, without the casts of placeholders (`?::INTEGER` is `?` in a list)."""
    tokens = [t for t in _TOKEN.findall(sql) if not t.isspace()]
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] == "::" and out and out[-1] == "?" and i + 1 < len(tokens):
            i += 2
            while i < len(tokens) and tokens[i] in ("[", "]", "[]"):
                i += 1
            continue
        out.append(tokens[i])
        i += 1
    return out


def _join(tokens: list[str]) -> str:
    out = ""
    for token in tokens:
        glued = (
            token == "(" and out[-1:].isalnum() and out.rsplit(" ", 1)[-1].upper() not in _SPACED_BEFORE_PAREN
        )
        if not out or token in (",", ")", "[", "]") or out.endswith(("(", "[")) or glued:
            out += token
        else:
            out += " " + token
    return out.replace(" .", ".").replace(". ", ".").replace(" :: ", "::")


def _split_top(tokens: list[str]) -> list[list[str]]:
    """Tokens split at the commas outside parentheses."""
    parts: list[list[str]] = [[]]
    depth = 0
    for token in tokens:
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        if token == "," and depth == 0:
            parts.append([])
        else:
            parts[-1].append(token)
    return [p for p in parts if p]


def _collapse_columns(tokens: list[str]) -> list[str]:
    """A list of more than three columns as `table.… (N cols)` per table, in order of first mention."""
    items = _split_top(tokens)
    if len(items) <= 3:
        return tokens
    prefixes: list[str] = []
    for item in items:
        text = _join(item)
        prefix = text.split(".", 1)[0] + "." if "." in text.split(" ", 1)[0] else ""
        if prefix not in prefixes:
            prefixes.append(prefix)
    heads = ", ".join(f"{p}{ELLIPSIS}" if p else ELLIPSIS for p in prefixes[:3])
    more = f", {ELLIPSIS}" if len(prefixes) > 3 else ""
    return [f"{heads}{more} ({len(items)} cols)"]


def _collapse_parens(tokens: list[str], keep_short: int = 24) -> list[str]:
    """Parenthesized groups longer than `keep_short` as `(SELECT …)` / `(…)`; shorter ones kept."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] != "(":
            out.append(tokens[i])
            i += 1
            continue
        depth, j = 0, i
        while j < len(tokens):
            depth += tokens[j] == "("
            depth -= tokens[j] == ")"
            if depth == 0:
                break
            j += 1
        inner = tokens[i + 1 : j]
        text = _join(inner)
        if len(text) <= keep_short:
            out.extend(["(", *inner, ")"])
        elif inner and inner[0].upper() == "SELECT":
            out.append(f"(SELECT {ELLIPSIS})")
        else:
            out.append(f"({ELLIPSIS})")
        i = j + 1
    return out


def _clauses(tokens: list[str]) -> list[list[str]]:
    """The statement cut before each top-level clause keyword (a JOIN with its LEFT/INNER... words)."""
    parts: list[list[str]] = [[]]
    depth = 0
    for token in tokens:
        word = token.upper()
        if token == "(":
            depth += 1
        elif token == ")":
            depth -= 1
        if depth == 0 and word in _CLAUSES and parts[-1]:
            carried: list[str] = []
            if word == "JOIN":
                while parts[-1] and parts[-1][-1].upper() in _JOIN_WORDS:
                    carried.insert(0, parts[-1].pop())
            if parts[-1]:
                parts.append([])
            parts[-1].extend(carried)
        parts[-1].append(token)
    return [p for p in parts if p]


def _collapse_insert(clause: list[str]) -> list[str]:
    """`INSERT INTO t (a, b, c)` as `INSERT INTO t (3 cols)`."""
    if "(" not in clause:
        return clause
    start = clause.index("(")
    inner = clause[start + 1 : -1] if clause[-1] == ")" else clause[start + 1 :]
    return [*clause[:start], f"({len(_split_top(inner))} cols)"]


def _compact_tokens(tokens: list[str], long_condition: int, columns: bool = True) -> list[str]:
    """The statement with its lists collapsed; ON conditions longer than `long_condition` as `…`, and the
    select list too unless `columns`."""
    out: list[str] = []
    for clause in _clauses(tokens):
        head = clause[0].upper()
        if head == "SELECT":
            start = 2 if len(clause) > 1 and clause[1].upper() == "DISTINCT" else 1
            items = _collapse_columns(_collapse_parens(clause[start:])) if columns else [ELLIPSIS]
            out.extend([*clause[:start], *items])
        elif head == "INSERT":
            out.extend(_collapse_insert(clause))
        elif head == "VALUES":
            out.extend([clause[0], f"({ELLIPSIS})"])
        elif head == "ON" and len(_join(clause[1:])) > long_condition:
            out.extend(["ON", ELLIPSIS])
        elif head == "SET":
            out.extend([clause[0], *_collapse_columns(_collapse_parens(clause[1:]))])
        elif head == "RETURNING":
            out.extend([clause[0], *_collapse_columns(clause[1:])])
        else:
            out.extend(_collapse_parens(clause))
    return out


def compact_sql(fingerprint: str, width: int | None = None) -> str:
    """The fingerprint in a short form for a list, at most `width` characters (None: no limit); one that
    fits is shown as it is."""
    if width is not None and len(fingerprint) <= width:
        return fingerprint
    tokens = _tokens(fingerprint)
    if not tokens:
        return fingerprint
    text = _join(_compact_tokens(tokens, LONG_CONDITION))
    if width is None or len(text) <= width:
        return text
    for long_condition, columns in ((0, True), (0, False)):  # shorter and shorter before cutting anything
        text = _join(_compact_tokens(tokens, long_condition, columns))
        if len(text) <= width:
            return text
    if width < 8:
        return text[: max(0, width - 1)] + ELLIPSIS
    tail = width * 2 // 5
    return text[: width - tail - 1].rstrip() + ELLIPSIS + text[-tail:].lstrip()
