"""The JSON-lines protocol of the SQL test apps (sql_app.py, qtime_app.py, secret_app.py), both halves.

In the app: `serve()` reads one JSON object per line on stdin, `{"cmd": NAME, ...args}`, runs the command
and writes one reply per line on stdout, `{"ok": true, "result": ...}` or `{"ok": false, "error": MSG,
"type": NAME, "value_error": bool}`; `{"cmd": "exit"}` ends it. The first line out is the app's hello,
`{"ready": true, "pid": PID, ...}`.
In the test: `LineApp` starts such an app, sends commands and reads the replies with a deadline.
Standard library only (the apps import it before anything else).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tests.helpers import ChildLines, close_streams

ROOT = Path(__file__).resolve().parents[2]
REPLY_TIMEOUT_S = 60.0


def serve(commands: Mapping[str, Callable[..., Any]], **hello: Any) -> None:
    """Say `hello` (with the pid), then answer commands until `exit` or the end of stdin."""
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid(), **hello}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        name = request.pop("cmd")
        if name == "exit":
            break
        try:
            if name not in commands:
                raise ValueError(f"unknown command {name!r}")
            reply: dict[str, Any] = {"ok": True, "result": commands[name](**request)}
        except Exception as exc:
            reply = {
                "ok": False,
                "error": str(exc),
                "type": type(exc).__name__,
                "value_error": isinstance(exc, ValueError),
            }
        out.write(json.dumps(reply, default=str) + "\n")
        out.flush()


class AppError(Exception):
    """A command the app answered with an error: the exception's type name, message, and ValueError-ness."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply.get('type')}: {reply.get('error')}")
        self.type = str(reply.get("type"))
        self.message = str(reply.get("error"))
        self.value_error = bool(reply.get("value_error"))


class LineApp:
    """A running app script speaking this protocol (cwd the repository, without the environment variables
    `unset`): send commands, read replies with a deadline, ask it to exit at the end."""

    def __init__(self, script: Path, *args: str, unset: Iterable[str] = ("PYTHONPATH",)) -> None:
        dropped = set(unset)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            cwd=ROOT,
            env={k: v for k, v in os.environ.items() if k not in dropped},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.output = ChildLines(self.proc, script.name)
        try:
            self.hello = self._reply()
            assert self.hello.get("ready"), self.hello
        except BaseException:
            self.close()
            raise
        self.pid = int(self.hello["pid"])

    @property
    def stderr(self) -> str:
        """Everything the app wrote on stderr so far."""
        return self.output.stderr

    def _reply(self) -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(self.output.next(REPLY_TIMEOUT_S))
        return reply

    def call(self, cmd: str, **args: Any) -> Any:
        """Run `cmd` in the app and return its result; AppError if it failed there."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        reply = self._reply()
        if not reply["ok"]:
            raise AppError(reply)
        return reply["result"]

    def close(self) -> None:
        """Ask the app to exit; kill it if it does not within 15 s."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        close_streams(self.proc)
