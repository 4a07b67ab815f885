"""Helpers shared by the test modules (importable, unlike conftest fixtures): polling with a deadline, a
short socket directory, a free loopback port. Standard library only, so target scripts can use them too."""

from __future__ import annotations

import contextlib
import inspect
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def describe(predicate: Callable[[], object]) -> str:
    """What a predicate checks, for a timeout message: its source line(s), else its repr."""
    try:
        return " ".join(line.strip() for line in inspect.getsource(predicate).splitlines())
    except (OSError, TypeError):
        return repr(predicate)


def timeout_message(timeout: float, what: str, last: object) -> str:
    """The one wording of a failed wait: how long, what for, and the last value seen."""
    return f"timed out after {timeout}s waiting for {what} (last value: {last!r})"


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, what: str | None = None, interval: float = 0.02
) -> T:
    """Poll `predicate` every `interval` s until it returns something truthy and return that value; at the
    deadline, fail with what was awaited (`what`, else the predicate's source) and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(timeout_message(timeout, what or describe(predicate), value))
        time.sleep(interval)


@contextlib.contextmanager
def short_tmp_dir() -> Iterator[str]:
    """A fresh directory with a short path (Unix socket paths are limited to 107 bytes), removed after."""
    path = tempfile.mkdtemp(prefix="pt-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the caller binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_perftop(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m perftop ARGS...` run to its end with `env`, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "perftop", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def start_exp_target(stack: contextlib.ExitStack, sock_dir: str, name: str) -> Any:
    """An instrumented tests/targets/exp_target.py process named `name` with its agent in `sock_dir`,
    stopped with `stack` (a tests.targets.agent_harness.Target: the export and OTLP tests' one copy)."""
    from tests.targets.agent_harness import Target

    script = Path(__file__).resolve().parent / "targets" / "exp_target.py"
    return stack.enter_context(Target(sock_dir, name, script=script))


def start_exporter(stack: contextlib.ExitStack, sock_dir: str, *args: str) -> str:
    """`perftop export ARGS` on a free loopback port for the agents in `sock_dir`, stopped with `stack`:
    its base URL, `http://127.0.0.1:PORT` (the export tests' one copy)."""
    from tests.targets.exp_procs import Command

    cmd = stack.enter_context(Command("export", "--listen", "127.0.0.1:0", "--socket-dir", sock_dir, *args))
    port = cmd.wait_line(r"exporting on http://[^:]+:(\d+)/metrics").group(1)
    return f"http://127.0.0.1:{port}"
