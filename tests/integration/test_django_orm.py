"""Django's ORM in the query statistics: a real Django app with models (tests/targets/web/django_orm_app.py)
on PostgreSQL, MariaDB and SQLite, served by gunicorn (2 sync workers) or runserver under `perftop run`,
with requests over 127.0.0.1.

The oracle is the app itself: each response lists the statements its view ran (seen by an execute wrapper
of the app's own, inside perftop's) with the time their `execute()` took there, and the time of the ORM
calls that ran them (execute, fetch and the ORM's own work). For PostgreSQL, pg_stat_statements' calls
count the same executions again, on the server's side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perftop.agent.fingerprint import fingerprint
from tests.helpers import free_port, run_perftop, wait_for
from tests.integration.test_frameworks import REPO, Service, gunicorn
from tests.targets.sql_client import PG_URL, database_url, new_suffix

pytest.importorskip("django")
pytest.importorskip("gunicorn")

APP = REPO / "tests" / "targets" / "web" / "django_orm_app.py"
WSGI = "tests.targets.web.django_orm_app:application"
BOOKS = "GET /books/{author_id}/"
TOLERANCE_MS = 0.05
"""Slack on the SQL-time bounds: rounding of sums of many small figures (well above it in practice)."""


def app_env(kind: str, tmp_path: Path) -> dict[str, str]:
    """The app's database settings (skipping when the database is unreachable; failing for PostgreSQL
    under CI=true), with tables of their own for this run, created and filled."""
    database_url(kind, tmp_path)
    db = f"sqlite:{tmp_path / 'django.db'}" if kind == "sqlite" else kind
    env = {"PERFTOP_TEST_DJANGO_DB": db, "PERFTOP_TEST_SUFFIX": new_suffix()}
    manage("setup", env)
    return env


def manage(command: str, env: dict[str, str], extra: dict[str, str] | None = None) -> str:
    """Run `django_orm_app.py COMMAND` (without perftop unless `extra` asks for it); its stdout."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PERFTOP", "PERFTOP_TEST_SELF")}
    out = subprocess.run(
        [sys.executable, str(APP), command],
        cwd=REPO,
        env={**base, **env, **(extra or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def tables(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    env = app_env(request.param, tmp_path)
    yield env
    if request.param != "sqlite":
        manage("drop", env)


@pytest.fixture
def serve() -> Iterator[Any]:
    services: list[Service] = []

    def start(cmd: list[str], port: int, env: dict[str, str], options: tuple[str, ...] = ()) -> Service:
        service = Service(cmd, port, env, options)
        services.append(service)
        service.wait_ready("/ping/")
        return service

    yield start
    for service in services:
        service.stop()


def get_json(service: Service, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{service.port}{path}", timeout=60) as resp:
        body: dict[str, Any] = json.loads(resp.read())
        return body


def wait_queries(
    service: Service, expected: dict[str, int], timeout: float = 30.0, ignore: str = "\0"
) -> dict[str, Any]:
    """The snapshot once its query counts are `expected` (fingerprint -> executions; fingerprints that
    contain `ignore` left out), or fail."""
    deadline = time.monotonic() + timeout
    while True:
        snap = service.snapshot()
        got = {q["fingerprint"]: q["count"] for q in snap["queries"] if ignore not in q["fingerprint"]}
        if got == expected or time.monotonic() > deadline:
            assert got == expected, f"perftop: {got}\nthe app ran: {expected}\n{service.output()}"
            return snap
        time.sleep(0.3)


def action(service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    return run_perftop("action", "--pid", str(service.proc.pid), *args, env=service.env, cwd=REPO)


def marker_line(marker: str) -> int:
    for number, line in enumerate(APP.read_text().splitlines(), start=1):
        if line.rstrip().endswith("# " + marker):
            return number
    raise AssertionError(f"no line marked {marker!r} in {APP}")


def pg_calls(suffix: str) -> dict[str, int]:
    """pg_stat_statements' calls of this run's SELECT and UPDATE statements, by query text."""
    import psycopg

    url = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query, calls FROM pg_stat_statements WHERE query LIKE %s AND query ~ '^(SELECT|UPDATE)'",
            (f"%{suffix}%",),
        ).fetchall()
    return {str(query): int(calls) for query, calls in rows}


@pytest.mark.parametrize("tables", ["postgresql", "mariadb", "sqlite"], indirect=True)
def test_django_queries_are_what_the_app_ran(serve: Any, tables: dict[str, str]) -> None:
    """Under `perftop run -- gunicorn -w 2`: every fingerprint and its count equal what the app's views
    ran, each request's queries and SQL time match its own, the slow list and the N+1 loop point at the
    view's lines, and EXPLAIN runs through the Django connection without showing a parameter value."""
    kind = tables["PERFTOP_TEST_DJANGO_DB"].split(":")[0]
    port = free_port()
    service = serve(gunicorn(WSGI, port), port, {**tables, "PERFTOP_SLOW_MS": "0"})
    answers: list[tuple[str, dict[str, Any]]] = []
    paths = [f"/books/{a}/" for a in (1, 2, 3, 4, 5, 6)] + ["/count/"] * 3 + ["/rename/2/", "/rename/3/"]
    for path in paths:
        answers.append((path, get_json(service, path)))

    ran = Counter(fingerprint(sql, kind == "mariadb") for _, a in answers for sql in a["statements"])
    snap = wait_queries(service, dict(ran))
    queries = {q["fingerprint"]: q for q in snap["queries"]}
    assert all(
        q["errors"] == 0 and q["dialect"] == ("mysql" if kind == "mariadb" else kind) for q in snap["queries"]
    )
    assert not any("secret" in fp or "author-" in fp for fp in queries), list(queries)

    # Per request: the queries of each route as the app counted them, and their SQL time between the
    # app's time for their execute() alone (inside perftop's span) and its time for the whole ORM calls.
    for route, prefix in (
        (BOOKS, "/books/"),
        ("GET /count/", "/count/"),
        ("GET /rename/{author_id}/", "/rename/"),
    ):
        mine = [a for p, a in answers if p.startswith(prefix)]
        figures = snap["requests"][route]
        counts = [len(a["statements"]) for a in mine]
        assert figures["count"] == len(mine), (route, figures)
        assert figures["queries_mean"] == pytest.approx(sum(counts) / len(counts)), (route, figures, counts)
        assert figures["queries_max"] == max(counts), (route, figures, counts)
        low = sum(a["execute_ms"] for a in mine) / len(mine)
        high = sum(a["sql_ms"] for a in mine) / len(mine)
        assert low * 0.99 - TOLERANCE_MS <= figures["sql_ms_mean"] <= high * 1.01 + TOLERANCE_MS, (
            route,
            figures["sql_ms_mean"],
            low,
            high,
        )

    # The slow list (every execution is slow at PERFTOP_SLOW_MS=0): each one placed in the app's view.
    slow = snap["slow_queries"]
    assert {q["fingerprint"] for q in slow} == set(ran), slow
    assert all(q["call_site"]["file"] == str(APP) and q["call_site"]["line"] > 0 for q in slow), slow

    # The N+1: each book's author looked up in a loop, flagged at that line of the view.
    lookup = next(fp for fp in queries if "pt_author_" in fp and "LIMIT" in fp)
    assert queries[lookup]["count"] == 6 * 12
    assert queries[lookup]["n_plus_one"], queries[lookup]
    site = queries[lookup]["n_plus_one_site"]
    assert site["file"] == str(APP) and site["line"] == marker_line("N+1"), site
    books = snap["requests"][BOOKS]
    book_list = next(fp for fp in queries if "pt_book_" in fp and "ORDER" in fp)
    assert {lookup, book_list} <= set(books["top_fingerprints"]), books["top_fingerprints"]
    assert all(q["call_site"]["file"] == str(APP) for q in books["slowest"][0]["queries"])

    if kind == "postgresql":  # the server counted the same executions
        calls = pg_calls(tables["PERFTOP_TEST_SUFFIX"])
        by_fp = Counter[str]()
        for query, n in calls.items():
            by_fp[fingerprint(query)] += n
        assert dict(by_fp) == {fp: n for fp, n in ran.items()}, (calls, ran)

    # EXPLAIN through the Django connection alias: a plan, and no parameter value anywhere in it.
    count_fp = next(fp for fp in queries if "COUNT(" in fp)
    rename_fp = next(fp for fp in queries if fp.startswith("UPDATE"))
    for fp in (lookup, count_fp, rename_fp):
        out = action(service, "explain", "--fingerprint", fp, "--json")
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout)
        assert result["fingerprint"] == fp and result["values_redacted"], result
        assert result["dialect"] == ("mysql" if kind == "mariadb" else kind)
        assert result["plan"], result
        assert "secret" not in out.stdout and "author-" not in out.stdout, out.stdout
    # EXPLAIN did not run the UPDATE, and perftop's own statements were not recorded.
    after = {q["fingerprint"]: q["count"] for q in service.snapshot()["queries"]}
    assert after == dict(ran)

    if kind == "postgresql":  # the database's own time, read through a connection of the alias's own

        def server_mean_ms() -> float:
            """The lookup's mean time in the database, 0 while there is none."""
            server = {q["fingerprint"]: q["server_mean_ms"] for q in service.snapshot()["queries"]}
            return float(server.get(lookup) or 0.0)

        mean = wait_for(server_mean_ms, 40, f"the server time of {lookup!r}", interval=1)
        assert mean > 0, mean


def test_an_n_plus_one_in_a_django_template_loop_is_placed_at_the_template_line(
    serve: Any, tmp_path: Path
) -> None:
    """A lazy foreign-key load in a Django template's `{% for %}` loop: the N+1 hint and the request's
    queries name the template file and the line that reads it, not the view's `render()` line."""
    env = app_env("sqlite", tmp_path)
    port = free_port()
    service = serve(gunicorn(WSGI, port), port, env)
    for author in (1, 2):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/shelf/{author}/", timeout=60) as resp:
            assert resp.read().count(b"<li>") == 12

    def counted() -> dict[str, Any]:
        """The snapshot once its two queries ran 2 and 24 times, else an empty dict."""
        snap = service.snapshot()
        counts = [q["count"] for q in snap["queries"] if "sqlite_master" not in q["fingerprint"]]
        return snap if sorted(counts) == [2, 24] else {}

    snap = wait_for(counted, 30, "the two queries counted 2 and 24 times", interval=0.3)
    lookup = next(q for q in snap["queries"] if q["count"] == 24)
    assert "pt_author_" in lookup["fingerprint"] and lookup["n_plus_one"], lookup
    template = APP.parent / "templates" / "shelf.html"
    line = next(n for n, text in enumerate(template.read_text().splitlines(), 1) if "{# N+1 #}" in text)
    expected = {"file": str(template), "line": line, "function": "template"}
    assert lookup["n_plus_one_site"] == expected, lookup["n_plus_one_site"]
    slowest = snap["requests"]["GET /shelf/{author_id}/"]["slowest"][0]["queries"]
    sites = [q["call_site"] for q in slowest if q["fingerprint"] == lookup["fingerprint"]]
    assert sites and all(site == expected for site in sites), sites


@pytest.mark.parametrize("server", ["runserver", "uvicorn-asgi"])
def test_an_app_that_also_instruments_itself_is_timed_once(serve: Any, tmp_path: Path, server: str) -> None:
    """`perftop.instrument_django()` called by the app under `perftop run` (runserver; uvicorn, where the
    ASGI handler runs the views in a thread of its own): each query once, in its request.
    (runserver's own check for unapplied migrations reads sqlite_master before serving: not a view's.)"""
    env = {**app_env("sqlite", tmp_path), "PERFTOP_TEST_SELF": "1"}
    port = free_port()
    if server == "runserver":
        cmd = ["python", str(APP), "runserver", "--noreload", f"127.0.0.1:{port}"]
    else:
        cmd = ["uvicorn", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        cmd.append("tests.targets.web.django_orm_app:asgi_application")
    service = serve(cmd, port, env)
    answers = [get_json(service, p) for p in ("/books/1/", "/books/2/", "/count/")]
    ran = Counter(fingerprint(sql) for a in answers for sql in a["statements"])
    snap = wait_queries(service, dict(ran), ignore="sqlite_master")
    assert snap["requests"][BOOKS]["queries_max"] == 13


@pytest.mark.parametrize("how", ["--no-frameworks", "PERFTOP_FRAMEWORKS=0"])
def test_turning_frameworks_off_turns_the_django_hook_off(serve: Any, tmp_path: Path, how: str) -> None:
    env = app_env("sqlite", tmp_path)
    options: tuple[str, ...] = ()
    if how == "--no-frameworks":
        options = ("--no-frameworks",)
    else:
        env["PERFTOP_FRAMEWORKS"] = "0"
    port = free_port()
    service = serve(gunicorn(WSGI, port), port, env, options)
    assert len(get_json(service, "/books/1/")["statements"]) == 13
    assert get_json(service, "/count/")["statements"]
    snap = service.snapshot()
    assert not snap["queries"] and not snap["requests"], snap["queries"]


def test_a_query_is_timed_until_its_rows_are_fetched(tmp_path: Path) -> None:
    """SQLite returns a statement's first row from execute() and computes the others while they are
    fetched: the query's time covers the fetching, and ends when the cursor is closed."""
    env = app_env("sqlite", tmp_path)
    result = json.loads(manage("fetch", env, {"PERFTOP_TEST_SELF": "1"}))
    assert result["rows"] == 3
    recorded = [q for fp, q in result["recorded"].items() if fp.startswith("WITH RECURSIVE")]
    assert len(recorded) == 1 and recorded[0]["count"] == 1, result["recorded"]
    ms = recorded[0]["max_ms"]
    # The sketch's quantiles are within 1%; max is exact. Fetching is most of the work, and inside.
    assert result["fetch_ms"] > 10 * result["execute_ms"], result
    assert result["fetch_ms"] <= ms <= result["closed_ms"], (ms, result)


@pytest.mark.parametrize("kind", ["postgresql", "mariadb"])
def test_explain_through_django_is_timed_out_cancelled_and_read_only(tmp_path: Path, kind: str) -> None:
    """EXPLAIN ANALYZE of a 4 s statement the app ran through Django, asked in a thread as a viewer's
    request is: stopped at its 0.3 s timeout, cancelled in the database when its viewer goes away, refused
    when it would write (PostgreSQL's read-only transaction); perftop's own statements are not recorded,
    and the app's connection works on."""
    env = app_env(kind, tmp_path)
    try:
        result = json.loads(manage("explain-limits", env, {"PERFTOP_TEST_SELF": "1"}))
    finally:
        manage("drop", env)
    database = "postgresql" if kind == "postgresql" else "mariadb"
    assert (
        result["timeout"]["error"] == f"EXPLAIN stopped: it ran longer than its 0.3 s timeout on {database}"
    )
    assert result["cancel"]["error"] == "EXPLAIN cancelled: the viewer that asked for it went away"
    # Both ended before the statement's own 4 s would have: the database stopped it.
    assert result["timeout"]["seconds"] < 4 and result["cancel"]["seconds"] < 4, result
    if kind == "postgresql":
        assert result["refused"]["error"].startswith("ANALYZE refused: running this statement would write")
    assert result["app_still_works"] == 8
    app_statements = ("sleep", "nextval", "count(*)", "set session transaction", "select version()")
    recorded = result["recorded"]
    assert all(any(s in fp.lower() for s in app_statements) for fp in recorded), recorded
    assert [n for fp, n in recorded.items() if "sleep" in fp.lower()] == [1], recorded
