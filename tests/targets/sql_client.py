"""Test-side helpers for the SQL hook tests: database URLs and reachability, and a driver for sql_app.py.

Not collected by pytest (no test_ prefix); imported by tests/integration/test_sqlalchemy_hook.py and
tests/integration/test_explain.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
APP = Path(__file__).resolve().with_name("sql_app.py")
PG_URL = os.environ.get("PERFTOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("PERFTOP_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REPLY_TIMEOUT_S = 60.0


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


class AppError(Exception):
    """A command the app answered with an error: the exception's type name, message, and ValueError-ness."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(reply.get("error"))
        self.type = str(reply.get("type"))
        self.message = str(reply.get("error"))
        self.value_error = bool(reply.get("value_error"))


class SqlApp:
    """A running sql_app.py: send commands, read replies with a deadline."""

    def __init__(self, url: str, suffix: str, *options: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), url, suffix, *options],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self._lines), daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        hello = self._reply()
        assert hello.get("ready"), hello
        self.dialect = str(hello["dialect"])

    @staticmethod
    def _read(stream: Any, lines: queue.Queue[str | None]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def _reply(self) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=REPLY_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(
                f"sql_app gave no reply in {REPLY_TIMEOUT_S}s; stderr: {self.stderr()}"
            ) from None
        if line is None:
            raise AssertionError(f"sql_app exited ({self.proc.poll()}); stderr: {self.stderr()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def stderr(self) -> str:
        return "".join(self._stderr)[-3000:]

    def call(self, cmd: str, **args: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        reply = self._reply()
        if not reply["ok"]:
            raise AppError(reply)
        return reply["result"]

    def stats(self, window_s: float | None = None, now: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self.call("stats", window_s=window_s, now=now)
        return result

    def close(self) -> None:
        """Ask the app to exit; kill it if it does not within a few seconds."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()


def drop_tables(url: str, suffix: str) -> None:
    """Drop the tables an app with `suffix` may have left (when it died before its teardown)."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            for name in ("orders", "users", "items", "stale"):
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}_{suffix}")
    finally:
        engine.dispose()


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
