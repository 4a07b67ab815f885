"""Test-side driver for secret_app.py, and the perftop command line run against it (not collected)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers import run_perftop, short_tmp_dir
from tests.targets.json_lines import ROOT, AppError, LineApp

APP = Path(__file__).resolve().with_name("secret_app.py")


class SecretApp(LineApp):
    """A running secret_app.py with its own socket directory."""

    def __init__(self, socket_dir: str, urls: list[str], keep_values: bool) -> None:
        self.socket_dir = socket_dir
        options = ["--keep-values"] if keep_values else []
        super().__init__(APP, socket_dir, *urls, *options, unset=("PYTHONPATH", "PERFTOP_SOCKET_DIR"))

    def sql(
        self,
        sql: str,
        params: dict[str, Any] | list[dict[str, Any]] | None = None,
        engine: int = 0,
        fetch: bool = False,
    ) -> Any:
        return self.call("sql", sql=sql, params=params, engine=engine, fetch=fetch)

    def failing_sql(self, sql: str, params: dict[str, Any] | None = None, engine: int = 0) -> AppError:
        """Run a statement that must fail in the app; its error (as the app saw it, values and all)."""
        try:
            self.sql(sql, params, engine)
        except AppError as exc:
            return exc
        raise AssertionError(f"{sql!r} did not fail")


@contextlib.contextmanager
def secret_app(*urls: str, keep_values: bool = False) -> Iterator[SecretApp]:
    """A started secret_app.py on `urls`, in a private socket directory; always stopped afterwards."""
    with short_tmp_dir() as sockets:
        app = SecretApp(sockets, list(urls), keep_values)
        try:
            yield app
        finally:
            app.close()


def perftop_env(app: SecretApp) -> dict[str, str]:
    """This environment without PYTHONPATH, with the app's socket directory."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PERFTOP_SOCKET_DIR"] = app.socket_dir
    return env


def perftop(app: SecretApp, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`python -m perftop ARGS` with the app's socket directory."""
    return run_perftop(*args, env=perftop_env(app), timeout=timeout)


def start_perftop(app: SecretApp, *args: str) -> subprocess.Popen[str]:
    """`python -m perftop ARGS` in the background (the test ends it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "perftop", *args],
        cwd=ROOT,
        env=perftop_env(app),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
