"""Statement values never leave the app: secrets planted as bound parameters and inline literals, and
errors that quote them, are absent from every output a viewer gets (the agent's stats over its socket,
`perftop snapshot --json`, `perftop action explain` text and JSON, a `perftop record` file), on SQLite,
PostgreSQL and MariaDB, unless the app opted in with `instrument_sqlalchemy(..., keep_values=True)`.

Each secret is first shown to reach the app's own view (the error the app caught, the plan the database
returns with keep_values), so a test that finds no secret is not one that planted none.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perftop.collectors.agent_view import call_agent
from perftop.recording.store import RecordingReader
from tests.targets.secret_client import SecretApp, perftop, secret_app
from tests.targets.sql_client import database_url, new_suffix

DUP = "bob-SECRET-DUP@example.com"
BAD_INT = "SECRET-ERR-VALUE"
PARAM = "hunter2-SECRET-PARAM"
INLINE = "SECRET-INLINE-LITERAL"
NUMBER = "987654321"
DOUBLE_QUOTED = "SECRET-DOUBLE-QUOTED"
"""A string literal in MySQL's double quotes (elsewhere those quote names)."""
SECRETS = (DUP, BAD_INT, PARAM, INLINE, NUMBER, DOUBLE_QUOTED)

KINDS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.db),
    pytest.param("mariadb", marks=pytest.mark.db),
]


def _known(app: SecretApp, fp: str) -> str:
    """`fp`, after checking that the agent lists it."""
    stats = call_agent(app.pid, "stats", {"window": None}, app.socket_dir, 30.0)
    assert fp in [q["fingerprint"] for q in stats["queries"]["queries"]], stats["queries"]["queries"]
    return fp


def _plant(app: SecretApp, kind: str, table: str) -> dict[str, str]:
    """Run the statements that carry the secrets; the app's own errors, which quote them."""
    app.sql(
        f"CREATE TABLE {table} (id INT PRIMARY KEY, email VARCHAR(200) UNIQUE, password VARCHAR(200), n INT)"
    )
    rows = [{"i": i, "e": f"user{i}@example.com", "p": f"pw{i}", "n": i % 7} for i in range(1, 3000)]
    app.sql(f"INSERT INTO {table} (id, email, password, n) VALUES (:i, :e, :p, :n)", rows)
    insert = f"INSERT INTO {table} (id, email, password, n) VALUES (:i, :e, :p, :n)"
    app.sql(insert, {"i": 10000, "e": DUP, "p": PARAM, "n": 1})
    errors = {"dup": app.failing_sql(insert, {"i": 10001, "e": DUP, "p": "x", "n": 2}).message}
    if kind == "postgresql":
        errors["bad_int"] = app.failing_sql(f"SELECT id FROM {table} WHERE n = :v", {"v": BAD_INT}).message
    elif kind == "mariadb":
        errors["bad_int"] = app.failing_sql(
            insert, {"i": 10002, "e": "c@example.com", "p": "x", "n": BAD_INT}
        ).message
    assert app.sql(f"SELECT id FROM {table} WHERE password = :p", {"p": PARAM}, fetch=True) == [[10000]]
    app.sql(f"SELECT id FROM {table} WHERE password = '{INLINE}' OR n = {NUMBER}", None, fetch=True)
    if kind == "mariadb":
        app.sql(f'SELECT n FROM {table} WHERE email = "{DOUBLE_QUOTED}"', None, fetch=True)
    return errors


def _outputs(app: SecretApp, kind: str, table: str, tmp_path: Path) -> dict[str, str]:
    """Every output a viewer can get, as text: name -> text."""
    out: dict[str, str] = {}
    out["stats"] = json.dumps(call_agent(app.pid, "stats", {"window": None}, app.socket_dir, 30.0))
    snapshot = perftop(app, "snapshot", "--pid", str(app.pid), "--json")
    assert snapshot.returncode == 0, snapshot.stderr
    out["snapshot"] = snapshot.stdout
    param_fp = _known(app, f"SELECT id FROM {table} WHERE password = ?")
    inline_fp = _known(app, f"SELECT id FROM {table} WHERE password = ? OR n = ?")
    for label, fp in (("param", param_fp), ("inline", inline_fp)):
        runs = [("text", []), ("json", ["--json"])]
        if kind != "sqlite":
            runs.append(("analyze", ["--analyze", "--yes", "--json"]))
        for how, extra in runs:
            result = perftop(app, "action", "--pid", str(app.pid), "explain", "--fingerprint", fp, *extra)
            assert result.returncode == 0, result.stderr
            out[f"explain {label} {how}"] = result.stdout + result.stderr
    path = tmp_path / "secrets.rec"
    record = perftop(
        app, "record", "--pid", str(app.pid), "-o", str(path), "--interval", "0.2", "--duration", "1"
    )
    assert record.returncode == 0, record.stderr
    reader = RecordingReader(str(path))
    try:
        assert len(reader) >= 2
        out["recording frames"] = "\n".join(json.dumps(reader.frame(i)) for i in range(len(reader)))
    finally:
        reader.close()
    out["recording bytes"] = path.read_bytes().decode("latin-1")
    return out


def _squash(text: str, table: str) -> str:
    """An expression without brackets, quotes, casts and table qualifiers: `password = ?` however written."""
    for noise in ("(", ")", "`", "::text", "::character varying", f"{table}."):
        text = text.replace(noise, "")
    return text


def _slow_errors(stats_text: str) -> list[str]:
    return [s["error"] for s in json.loads(stats_text)["queries"]["slow_queries"] if s.get("error")]


@pytest.mark.parametrize("kind", KINDS)
def test_no_output_holds_a_planted_secret(kind: str, tmp_path: Path) -> None:
    url = database_url(kind, tmp_path)
    table = f"sec_{new_suffix()}"
    with secret_app(url) as app:
        try:
            errors = _plant(app, kind, table)
            out = _outputs(app, kind, table, tmp_path)
        finally:
            app.sql(f"DROP TABLE IF EXISTS {table}")

    # The secrets did reach the app: its own errors quote them (PostgreSQL's DETAIL line, MariaDB's message).
    if kind != "sqlite":
        assert DUP in errors["dup"] and BAD_INT in errors["bad_int"], errors
    leaks = {(name, s) for name, text in out.items() for s in SECRETS if s in text}
    assert not leaks, leaks

    # Redacted, not removed: the errors are there with their names, the plans keep their columns.
    slow = _slow_errors(out["stats"])
    if kind == "mariadb":
        assert any("Duplicate entry ? for key 'email'" in e for e in slow), slow
        assert any("Incorrect integer value: ? for column" in e for e in slow), slow
    elif kind == "postgresql":
        assert any("invalid input syntax for type integer: ?" in e for e in slow), slow
        assert any(f'unique constraint "{table}_email_key"' in e for e in slow), slow
    else:
        assert any(f"UNIQUE constraint failed: {table}.email" in e for e in slow), slow
    explained = json.loads(out["explain param json"])
    assert explained["values_redacted"] is True
    assert explained["statement"] == explained["fingerprint"]
    if kind != "sqlite":
        assert "password = ?" in _squash(json.dumps(explained["plan"]), table), explained["plan"]
        advice = [a for a in explained["advice"] if a["table"] == table and a["columns"] == ["password"]]
        assert advice, explained["advice"]
        assert "password = ?" in _squash(advice[0]["message"], table), advice


@pytest.mark.parametrize("kind", KINDS)
def test_keep_values_is_the_apps_opt_in(kind: str, tmp_path: Path) -> None:
    url = database_url(kind, tmp_path)
    table = f"sec_{new_suffix()}"
    with secret_app(url, keep_values=True) as app:
        try:
            _plant(app, kind, table)
            out = _outputs(app, kind, table, tmp_path)
        finally:
            app.sql(f"DROP TABLE IF EXISTS {table}")

    slow = " ".join(_slow_errors(out["stats"]))
    inline = json.loads(out["explain inline json"])
    assert (
        inline["values_redacted"] is False and INLINE in inline["statement"] and NUMBER in inline["statement"]
    )
    if kind == "mariadb":
        assert DUP in slow and BAD_INT in slow
        # The fingerprint is the one part not covered by keep_values: it is a key, always normalized.
        assert f"SELECT n FROM {table} WHERE email = ?" in out["stats"]
    if kind == "postgresql":
        assert BAD_INT in slow
    if kind != "sqlite":
        assert PARAM in json.dumps(json.loads(out["explain param json"])["plan"])
        assert PARAM in json.dumps(json.loads(out["explain param analyze"])["plan"])
        assert INLINE in json.dumps(inline["plan"])
        assert INLINE in out["explain inline text"]
