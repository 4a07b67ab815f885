"""SQL statement fingerprints: the statement with its literals and parameters replaced by `?`.

Two executions that differ only in values get the same fingerprint, so their timings add up in one row
of the query table. Standard library only (this runs inside the monitored app).

What normalization does, in one pass of a regex tokenizer:
- literals (numbers, hex, strings with `''` or backslash escapes, E''/N''/X''/B'' strings, PostgreSQL
  dollar-quoted strings, TRUE/FALSE) and every DBAPI paramstyle (`?`, `%s`, `%(name)s`, `:name`, `$1`)
  become `?`; NULL stays (it changes meaning: `IS NULL`);
- `IN (...)` and `ARRAY[...]` lists whose items all normalize alike collapse to one item, and a
  multi-row `VALUES (...), (...)` keeps its first row, whatever the length;
- comments are dropped, whitespace is folded, keywords are upper-cased, identifiers are kept as written;
- `::type` casts and `:=` are operators, never parameters.

`fingerprint()` caches by the raw statement text in a bounded dict, so a repeated statement costs one
dict lookup; `normalize()` is the uncached function.
"""

from __future__ import annotations

import re

CACHE_MAX = 4096
"""Raw statement texts kept in the cache; when full it is emptied (cheap, and rebuilt by the next misses)."""
MAX_FINGERPRINT_CHARS = 8192
"""Longer fingerprints are cut here: a statement that differs only past this point shares a fingerprint."""

_KEYWORD_TEXT = """
    ADD ALL ALTER ANALYZE AND ANY ARRAY AS ASC BEGIN BETWEEN BY CASCADE CASE CAST CHECK COLLATE COLUMN
    COMMIT CONFLICT CONSTRAINT CREATE CROSS CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP DEFAULT DELETE DESC
    DISTINCT DO DROP DUPLICATE ELSE END ESCAPE EXCEPT EXISTS EXPLAIN FALSE FETCH FILTER FIRST FOR FOREIGN
    FROM FULL GROUP HAVING IF IGNORE ILIKE IN INDEX INNER INSERT INTERSECT INTERVAL INTO IS JOIN KEY LAST
    LATERAL LEFT LIKE LIMIT LOCKED MATERIALIZED NATURAL NEXT NOT NOTHING NOWAIT NULL NULLS OF OFFSET ON
    ONLY OR ORDER OUTER OVER PARTITION PRAGMA PRIMARY RECURSIVE REFERENCES RELEASE REPLACE RETURNING RIGHT
    ROLLBACK ROW ROWS SAVEPOINT SELECT SET SHARE SIMILAR SKIP SOME TABLE TEMP TEMPORARY THEN TO TRANSACTION
    TRUE UNION UNIQUE UPDATE USING VALUES VIEW WHEN WHERE WINDOW WITH
"""
KEYWORDS = frozenset(_KEYWORD_TEXT.split())
"""Words upper-cased in fingerprints. Anything else (functions, tables, columns) keeps its spelling."""

_LITERAL_WORDS = frozenset({"TRUE", "FALSE"})

# One alternative per token kind; the group number tells the kind (see _KIND). Order matters: comments
# before operators, dollar strings before `$1`, `::`/`:=` before `:name`, prefixed strings before words.
_TOKEN_PARTS = (
    r"(\s+)",  # 1 whitespace
    r"(--[^\n]*|/\*[\s\S]*?(?:\*/|$))",  # 2 comment
    r"(\$(?:[A-Za-z_]\w*)?\$)",  # 3 dollar-quote opener (body found separately)
    r"((?:[EeNnXxBb]|[Uu]&)?'{STRING_BODY}'?)",  # 4 string (maybe unterminated)
    r'("(?:[^"]|"")*"?|`(?:[^`]|``)*`?)',  # 5 quoted identifier
    r"(0[xX][0-9A-Fa-f]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)",  # 6 number
    r"(::|:=|<=|>=|<>|!=|\|\||->>|->|#>>|#>|@>|<@|=>|&&)",  # 7 multi-char operator
    r"(\?\d*|%\([^)\s]*\)s|%s|:\d+|:[^\W\d]\w*|\$\d+)",  # 8 parameter
    r"((?:@@?)?[^\W\d][\w$]*)",  # 9 word (with MySQL's @var, @@system_var)
    r"([\s\S])",  # 10 any other single character
)
_STANDARD_BODY = r"(?:[^']|'')*"
_BACKSLASH_BODY = r"(?:[^'\\]|\\[\s\S]|'')*"


def _compile(body: str) -> re.Pattern[str]:
    return re.compile("|".join(_TOKEN_PARTS).replace("{STRING_BODY}", body))


_TOKEN_STANDARD = _compile(_STANDARD_BODY)
_TOKEN_BACKSLASH = _compile(_BACKSLASH_BODY)
_E_STRING = re.compile(r"[Ee]'" + _BACKSLASH_BODY + "'?")
_WHOLE_STANDARD = re.compile("'" + _STANDARD_BODY + "'")
_WHOLE_BACKSLASH = re.compile("'" + _BACKSLASH_BODY + "'")
_WHOLE_QUOTED = re.compile(r'"(?:[^"]|"")*"|`(?:[^`]|``)*`')

WS, COMMENT, DOLLAR, STRING, QUOTED, NUMBER, OPERATOR, PARAM, WORD, OTHER = range(1, 11)
"""Token kinds, as returned by `tokenize`."""


def _scan(sql: str, pattern: re.Pattern[str]) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    pos = 0
    end = len(sql)
    match = pattern.match
    while pos < end:
        m = match(sql, pos)
        if m is None:  # cannot happen (the last alternative takes any character); stay total anyway
            out.append((OTHER, sql[pos]))
            pos += 1
            continue
        kind = m.lastindex or OTHER
        text = m.group(kind)
        if kind == DOLLAR:
            close = sql.find(text, m.end())
            stop = end if close < 0 else close + len(text)
            kind, text = STRING, sql[pos:stop]
        elif kind == STRING and text[0] in "Ee" and text[1] == "'":
            em = _E_STRING.match(sql, pos)
            if em is not None:
                text = em.group(0)
        out.append((kind, text))
        pos += len(text)
    return out


_ADJACENT_AFTER_STRING = frozenset({WORD, NUMBER, STRING, QUOTED, PARAM})


def _misreadings(tokens: list[tuple[int, str]], backslash: bool) -> int:
    """How wrong a reading looks: unterminated strings or quoted names (heavily); a backslash outside
    any string, a string directly followed by a word, number or string, a comment holding a quote; and
    once, for the standard reading, a backslash before a closing quote."""
    score = ambiguous = 0
    for i, (kind, text) in enumerate(tokens):
        if kind == STRING and text.startswith("$"):
            tag = text[: text.index("$", 1) + 1]
            if len(text) < 2 * len(tag) or not text.endswith(tag):
                score += 10
        elif kind == STRING:
            whole = _WHOLE_BACKSLASH if backslash or text[0] in "Ee" else _WHOLE_STANDARD
            if whole.fullmatch(text, text.index("'")) is None:
                score += 10
            if i + 1 < len(tokens) and tokens[i + 1][0] in _ADJACENT_AFTER_STRING:
                score += 1
            if not backslash and "\\'" in text:
                ambiguous = 1  # a backslash before a quote may have been meant as an escape
        elif kind == QUOTED and _WHOLE_QUOTED.fullmatch(text) is None:
            score += 10
        elif kind == OTHER and text == "\\":
            score += 1
        elif kind == COMMENT and "'" in text:
            score += 1  # a comment that swallowed a quote: likely the tail of a misread string
    return score + ambiguous


def tokenize(sql: str) -> list[tuple[int, str]]:
    """(kind, text) tokens of `sql`, whitespace and comments included.

    Strings are read with the SQL-standard `''` escape. When the text has a backslash, it is also read
    with backslash escapes (MySQL's default, and PostgreSQL's E'' strings), and the reading that looks
    less wrong wins (the standard one on a tie).
    """
    standard = _scan(sql, _TOKEN_STANDARD)
    if "\\" not in sql:
        return standard
    score = _misreadings(standard, False)
    if score == 0:
        return standard
    escaped = _scan(sql, _TOKEN_BACKSLASH)
    return escaped if _misreadings(escaped, True) < score else standard


def significant(sql: str) -> list[tuple[int, str]]:
    """Tokens without whitespace and comments."""
    return [t for t in tokenize(sql) if t[0] not in (WS, COMMENT)]


_NO_SPACE_BEFORE = frozenset({",", ")", "[", "]", ".", "::", ";"})
_NO_SPACE_AFTER = frozenset({"(", "[", ".", "::"})
_SIGN_CONTEXT = frozenset({"(", ",", "=", "<", ">", "<=", ">=", "<>", "!=", "[", "+", "-", "*", "/", "%"})


def normalize(sql: str, double_quoted_literals: bool = False) -> str:
    """The fingerprint of `sql` (uncached). double_quoted_literals: `"..."` is a string (MySQL's default),
    not an identifier, so it becomes `?` too."""
    out: list[str] = []
    kinds: list[int] = []
    for kind, text in tokenize(sql):
        if kind in (WS, COMMENT):
            continue
        if kind in (STRING, NUMBER, PARAM) or (double_quoted_literals and kind == QUOTED and text[0] == '"'):
            _drop_unary_sign(out, kinds)
            out.append("?")
            kinds.append(PARAM)
        elif kind == WORD:
            upper = text.upper()
            if upper in _LITERAL_WORDS:
                out.append("?")
                kinds.append(PARAM)
            elif upper in KEYWORDS:
                out.append(upper)
                kinds.append(WORD)
            else:
                out.append(text)
                kinds.append(QUOTED)
        else:
            out.append(text)
            kinds.append(QUOTED if kind == QUOTED else OTHER)
    tokens = _collapse(out)
    text = _render(tokens, out, kinds)
    return text if len(text) <= MAX_FINGERPRINT_CHARS else text[:MAX_FINGERPRINT_CHARS]


def _drop_unary_sign(out: list[str], kinds: list[int]) -> None:
    """`= -5` and `(+1` lose the sign: it belongs to the literal, not to the statement's shape."""
    if out and out[-1] in ("-", "+") and (len(out) == 1 or out[-2] in _SIGN_CONTEXT or kinds[-2] == WORD):
        out.pop()
        kinds.pop()


def _matching(tokens: list[str], start: int) -> int:
    """Index of the bracket closing the one at `start`, or -1."""
    opening = tokens[start]
    closing = ")" if opening == "(" else "]"
    depth = 0
    for i in range(start, len(tokens)):
        t = tokens[i]
        if t == opening:
            depth += 1
        elif t == closing:
            depth -= 1
            if depth == 0:
                return i
    return -1


def _split_items(tokens: list[str]) -> list[list[str]]:
    """Top-level comma-separated items of a bracket's contents."""
    items: list[list[str]] = [[]]
    depth = 0
    for t in tokens:
        if t in ("(", "["):
            depth += 1
        elif t in (")", "]"):
            depth -= 1
        if t == "," and depth == 0:
            items.append([])
        else:
            items[-1].append(t)
    return items


def _collapse(tokens: list[str]) -> list[int]:
    """Indices of the tokens kept after collapsing IN/ARRAY lists and multi-row VALUES."""
    keep = [True] * len(tokens)
    i = 0
    n = len(tokens)
    while i < n:
        t = tokens[i]
        if t in ("IN", "ARRAY", "ANY") and i + 1 < n and tokens[i + 1] in ("(", "["):
            close = _matching(tokens, i + 1)
            if close > 0:
                items = _split_items(tokens[i + 2 : close])
                if len(items) > 1 and all(item == items[0] for item in items):
                    first_len = len(items[0])
                    for k in range(i + 2 + first_len, close):
                        keep[k] = False
        elif t == "VALUES" and i + 1 < n and tokens[i + 1] == "(":
            close = _matching(tokens, i + 1)
            j = close + 1
            while close > 0 and j + 1 < n and tokens[j] == "," and tokens[j + 1] == "(":
                nxt = _matching(tokens, j + 1)
                if nxt < 0:
                    break
                for k in range(j, nxt + 1):
                    keep[k] = False
                j = nxt + 1
        i += 1
    return [k for k in range(n) if keep[k]]


def _render(indices: list[int], tokens: list[str], kinds: list[int]) -> str:
    parts: list[str] = []
    prev = ""
    prev_kind = 0
    for k in indices:
        t = tokens[k]
        if parts and not (
            t in _NO_SPACE_BEFORE
            or prev in _NO_SPACE_AFTER
            or (t == "(" and prev_kind == QUOTED)  # a function call or a column list
        ):
            parts.append(" ")
        parts.append(t)
        prev = t
        prev_kind = kinds[k]
    return "".join(parts)


cache: dict[str, str] = {}
"""Fingerprints by statement text; the SQL hook's hot path reads it directly (one dict lookup)."""


def fingerprint(sql: str, double_quoted_literals: bool = False) -> str:
    """The cached fingerprint of `sql`: one dict lookup for a statement seen before. The cache is keyed
    by the text alone: the same text from a MySQL and a PostgreSQL engine gets the fingerprint it got first
    (with `"..."` as a string if MySQL came first, which hides a name but never shows a value)."""
    fp = cache.get(sql)
    if fp is None:
        fp = normalize(sql, double_quoted_literals)
        if len(cache) >= CACHE_MAX:
            cache.clear()
        cache[sql] = fp
    return fp


def statement_kind(sql: str) -> str:
    """The statement's first keyword, upper-cased (`SELECT`, `INSERT`, `WITH`...), or "" if none."""
    for kind, text in tokenize(sql):
        if kind == WORD:
            return text.upper()
        if kind not in (WS, COMMENT, OTHER):
            return ""
    return ""


_WRITE_STATEMENTS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE"})


def is_read_only_select(sql: str) -> bool:
    """A SELECT (or WITH ... SELECT) that writes nothing: no data-modifying CTE, no SELECT ... INTO.

    A data-modifying statement inside a query always follows an opening parenthesis (a CTE body or a
    subquery), so only words in that position are checked, not column or function names elsewhere.
    """
    tokens = significant(sql)
    if (
        not tokens
        or tokens[0][0] != WORD
        or tokens[0][1].upper() not in ("SELECT", "WITH", "VALUES", "TABLE")
    ):
        return False
    prev = ""
    for kind, text in tokens:
        word = text.upper() if kind == WORD else ""
        if word == "INTO" or (prev == "(" and word in _WRITE_STATEMENTS):
            return False
        prev = text
    return True


# -- redaction: literal values out of text that leaves the app ------------------------------------------

_NUMBERED_WORDS = frozenset({"SUBPLAN", "INITPLAN"})
"""PostgreSQL plan words whose number is a node's, not a value (`SubPlan 1`)."""


def redact_sql(text: str, double_quoted_literals: bool = False, numbers: bool = True) -> str:
    """`text` (SQL, or an SQL expression from a plan) with its literal values replaced by `?`.

    Strings (`'...'` with `''` or backslash escapes, E'', N'', X'', dollar-quoted), numbers and, where
    the dialect reads them as strings (MySQL, MariaDB), `"..."` become `?`; comments become `/*?*/`.
    Identifiers, keywords, operators, parameters and spacing stay as written, so a plan's `Filter` keeps
    its column names. Unlike `normalize`, nothing else changes. numbers=False keeps numbers (for text
    whose numbers are never values, such as SQLite's EXPLAIN QUERY PLAN details).
    """
    out: list[str] = []
    last_word = ""
    for kind, token in tokenize(text):
        if kind == STRING or (kind == QUOTED and double_quoted_literals and token.startswith('"')):
            out.append("?")
        elif kind == NUMBER:
            out.append(token if not numbers or last_word in _NUMBERED_WORDS else "?")
        elif kind == COMMENT:
            out.append("/*?*/")
        else:
            out.append(token)
        if kind != WS:
            last_word = token.upper() if kind == WORD else ""
    return "".join(out)


_IDENTIFIER_NOUN_TEXT = """
    column columns constraint database domain extension field function index key operator procedure
    relation role schema sequence table tablespace trigger type user view collation savepoint cursor
"""
_IDENTIFIER_NOUNS = frozenset(_IDENTIFIER_NOUN_TEXT.split())
"""Words after which a quoted name in an error message is an identifier (kept), not a value."""

ERROR_SCAN_MAX = 2000
"""Characters of an error message that are read (and redacted); the rest is cut off."""

_ERROR_FORMS = (
    # PostgreSQL DETAIL: Key (email)=(bob@x) already exists. / is not present in table "t".
    # Their values are not quoted: without the closing part (a message cut short), the rest goes.
    (
        re.compile(
            r"(\bKey \((?:[^()]|\([^()]*\))*\)=\()(?:.*(\)(?: already| is not| conflicts))|.*)", re.DOTALL
        ),
        r"\1?\2",
    ),
    (re.compile(r"(\bFailing row contains \()(?:.*(\))|.*)", re.DOTALL), r"\1?\2"),
    # MySQL / MariaDB: Duplicate entry 'x' for key 'email'; ... near '<SQL>' at line 1.
    (re.compile(r"(\bDuplicate entry )'.*'( for key )"), r"\1?\2"),
    (re.compile(r"(\bnear )'.*'( at line \d+)"), r"\1?\2"),
    (re.compile(r"(\bvalue: )'.*'( for column )"), r"\1?\2"),
    # PostgreSQL: invalid input syntax for type integer: "x" (a value up to the end of the line).
    (re.compile(r'(: )".*"$'), r"\1?"),
)
_ERROR_TOKEN = re.compile(
    r"""(?P<string>[EeNnXxBb]?'(?:[^'\\]|\\.|'')*(?:'|$))"""
    r"""|(?P<dq>"(?:[^"\\]|\\.|"")*(?:"|$))"""
    r"|(?P<dollar>\$(?:[A-Za-z_]\w*)?\$)"
    r"|(?P<number>(?<![\w.])(?:0[xX][0-9A-Fa-f]+|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?![\w.]))"
    r"|(?P<word>\w+)",
    re.DOTALL,
)
_KEPT_NUMBER_AFTER = frozenset({"line", "row", "position", "level", "code", "errno"})


def redact_error(text: str) -> str:
    """A database error message with the values it quotes replaced by `?`.

    The forms that quote a value with its own delimiters inside (PostgreSQL's `Key (email)=(...)`,
    `Failing row contains (...)`, `type integer: "..."`; MySQL's `Duplicate entry '...' for key`,
    `near '...' at line N`) are read first; then every quoted string is a value unless it follows a
    noun that names an identifier (`constraint "users_email_key"`, `for key 'email'`, `table 'x'`), and
    every number is a value unless it is a line, row or position. An unterminated quote hides the rest.
    An apostrophe inside a word (`doesn't`) is not a quote. SQLite's `UNIQUE constraint failed: t.c`
    names columns only and is kept. Text past ERROR_SCAN_MAX characters is dropped first (an error
    message is one line; this bounds the work on the app's thread), as `...`.
    """
    if len(text) > ERROR_SCAN_MAX:
        text = text[:ERROR_SCAN_MAX] + "..."
    for pattern, replacement in _ERROR_FORMS:
        text = pattern.sub(replacement, text)
    out: list[str] = []
    pos = 0
    last_word = ""
    for m in _ERROR_TOKEN.finditer(text):
        start = m.start()
        kind = m.lastgroup
        token = m.group()
        if kind == "string" and start > 0 and text[start - 1].isalnum() and token[0] == "'":
            continue  # an apostrophe inside a word: `doesn't`
        if kind == "word":
            last_word = token.lower()
            continue
        out.append(text[pos:start])
        if kind == "dollar":
            close = text.find(token, m.end())
            out.append("?")
            pos = len(text) if close < 0 else close + len(token)
            # the rest is scanned again from pos; finditer cannot jump, so finish here and recurse
            out.append(redact_error(text[pos:]) if pos < len(text) else "")
            return "".join(out)
        if kind == "number":
            out.append(token if last_word in _KEPT_NUMBER_AFTER else "?")
        elif kind in ("string", "dq") and last_word in _IDENTIFIER_NOUNS:
            out.append(token)
        else:
            out.append("?")
        pos = m.end()
        last_word = ""
    out.append(text[pos:])
    return "".join(out)
