"""Test-side helpers for the SQL hook tests: database URLs and reachability, and a driver for sql_app.py.

Not collected by pytest (no test_ prefix); imported by tests/integration/test_sqlalchemy_hook.py and
tests/integration/test_explain.py.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.targets.json_lines import AppError as AppError
from tests.targets.json_lines import LineApp

APP = Path(__file__).resolve().with_name("sql_app.py")
PG_URL = os.environ.get("PERFTOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("PERFTOP_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")


def unreachable(url: str) -> str | None:
    """Why the database at `url` cannot be used, or None if a connection works."""
    import sqlalchemy as sa

    args = {"connect_timeout": 3}
    try:
        engine = sa.create_engine(url, connect_args=args, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def database_url(kind: str, tmp_path: Path) -> str:
    """The URL for a database kind, skipping (or failing, for PostgreSQL under CI=true) if unreachable."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'perftop_sql_test.db'}"
    url = {"postgresql": PG_URL, "mariadb": MARIADB_URL}[kind]
    why = unreachable(url)
    if why is not None:
        message = f"{kind} at {url} is unreachable: {why}"
        if kind == "postgresql" and os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true: PostgreSQL is required)")
        pytest.skip(message)
    return url


def new_suffix() -> str:
    return uuid.uuid4().hex[:10]


def marker_line(marker: str) -> int:
    """The line of sql_app.py that carries `# <marker>`."""
    for number, line in enumerate(APP.read_text().splitlines(), start=1):
        if line.rstrip().endswith("# " + marker):
            return number
    raise AssertionError(f"no line marked {marker!r} in {APP}")


class SqlApp(LineApp):
    """A running sql_app.py (or `script`, another app of the same protocol such as qtime_app.py)."""

    def __init__(self, url: str, suffix: str, *options: str, script: Path = APP) -> None:
        super().__init__(script, url, suffix, *options)
        self.dialect = str(self.hello["dialect"])

    def stats(self, window_s: float | None = None, now: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.call("stats", window_s=window_s, now=now)
        return result


@contextlib.contextmanager
def direct_engine(url: str) -> Iterator[Any]:
    """An engine of the test's own on `url` (perftop never touches it), without a pool, disposed after."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def drop_tables(url: str, suffix: str) -> None:
    """Drop the tables an app with `suffix` may have left (when it died before its teardown)."""
    with direct_engine(url) as engine, engine.begin() as conn:
        for name in ("orders", "users", "items", "stale"):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}_{suffix}")


@contextlib.contextmanager
def running_app(url: str, *options: str, rows: int = 2000) -> Iterator[tuple[SqlApp, str]]:
    """A started sql_app with its tables set up; always stopped and its tables dropped afterwards."""
    suffix = new_suffix()
    app: SqlApp | None = None
    try:
        app = SqlApp(url, suffix, *options)
        app.call("setup", rows=rows)
        yield app, suffix
    finally:
        if app is not None:
            with contextlib.suppress(AssertionError, AppError):
                app.call("teardown")
            app.close()
        drop_tables(url, suffix)
