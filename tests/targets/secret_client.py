"""Test-side driver for secret_app.py, and the perftop command line run against it (not collected)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers import short_tmp_dir
from tests.targets.agent_harness import ROOT

APP = Path(__file__).resolve().with_name("secret_app.py")
REPLY_TIMEOUT_S = 60.0


class AppFailed(Exception):
    """A command the app answered with an error: the exception's type name and message."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply.get('type')}: {reply.get('error')}")
        self.type = str(reply.get("type"))
        self.message = str(reply.get("error"))


class SecretApp:
    """A running secret_app.py with its own socket directory."""

    def __init__(self, socket_dir: str, urls: list[str], keep_values: bool) -> None:
        self.socket_dir = socket_dir
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PERFTOP_SOCKET_DIR")}
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), socket_dir, *urls, *(["--keep-values"] if keep_values else [])],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        hello = self._reply()
        assert hello.get("ready"), hello
        self.pid = int(hello["pid"])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def stderr(self) -> str:
        return "".join(self._stderr)

    def _reply(self) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=REPLY_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(
                f"secret_app gave no reply in {REPLY_TIMEOUT_S} s: {self.stderr()}"
            ) from None
        if line is None:
            raise AssertionError(f"secret_app exited ({self.proc.poll()}): {self.stderr()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, cmd: str, **args: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        reply = self._reply()
        if not reply["ok"]:
            raise AppFailed(reply)
        return reply["result"]

    def sql(
        self,
        sql: str,
        params: dict[str, Any] | list[dict[str, Any]] | None = None,
        engine: int = 0,
        fetch: bool = False,
    ) -> Any:
        return self.call("sql", sql=sql, params=params, engine=engine, fetch=fetch)

    def failing_sql(self, sql: str, params: dict[str, Any] | None = None, engine: int = 0) -> AppFailed:
        """Run a statement that must fail in the app; its error (as the app saw it, values and all)."""
        try:
            self.sql(sql, params, engine)
        except AppFailed as exc:
            return exc
        raise AssertionError(f"{sql!r} did not fail")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"cmd": "exit"}\n')
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()


@contextlib.contextmanager
def secret_app(*urls: str, keep_values: bool = False) -> Iterator[SecretApp]:
    """A started secret_app.py on `urls`, in a private socket directory; always stopped afterwards."""
    with short_tmp_dir() as sockets:
        app = SecretApp(sockets, list(urls), keep_values)
        try:
            yield app
        finally:
            app.close()


def perftop(app: SecretApp, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`python -m perftop ARGS` with the app's socket directory."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PERFTOP_SOCKET_DIR"] = app.socket_dir
    return subprocess.run(
        [sys.executable, "-m", "perftop", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_perftop(app: SecretApp, *args: str) -> subprocess.Popen[str]:
    """`python -m perftop ARGS` in the background (the test ends it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PERFTOP_SOCKET_DIR"] = app.socket_dir
    return subprocess.Popen(
        [sys.executable, "-m", "perftop", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
