"""Helpers shared by the test modules (importable, unlike conftest fixtures): polling with a deadline, a
short socket directory, a free loopback port, the perftop command line, and child processes (their output,
readiness and stopping). Standard library only, so target scripts can use them too."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import queue
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
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


def run_perftop(
    *args: str,
    env: dict[str, str],
    timeout: float = 120,
    cwd: str | os.PathLike[str] | None = None,
    stdin: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m perftop ARGS...` run to its end with `env` (in `cwd`, with `stdin`), output captured as
    text."""
    return subprocess.run(
        [sys.executable, "-m", "perftop", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd,
        stdin=stdin,
        check=False,
    )


class ChildLines:
    """A child's stdout read line by line by a thread (so a test can wait for a line with a deadline) and
    its stderr collected by another (so a failure can show what the child said). `name` is for messages."""

    def __init__(self, proc: subprocess.Popen[str], name: str) -> None:
        self.proc = proc
        self.name = name
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        """Everything the child wrote on stderr so far."""
        return "".join(self._stderr)

    def next(self, timeout: float) -> str:
        """The child's next stdout line (without its newline); AssertionError at the deadline or its exit."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            message = f"no line from {self.name} within {timeout} s; stderr: {self.stderr}"
            raise AssertionError(message) from None
        if line is None:
            raise AssertionError(f"{self.name} exited ({self.proc.poll()}); stderr: {self.stderr}")
        return line


def close_streams(proc: subprocess.Popen[Any]) -> None:
    """Close a finished child's pipes (an unclosed pipe is a ResourceWarning at the end of the test)."""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.close()


@contextlib.contextmanager
def refreshing(fetch: Callable[[], object], every: float) -> Iterator[None]:
    """`fetch()` every `every` s on a thread for as long as the block runs (a viewer refreshing while
    workers come and go); the thread is stopped and joined after."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            fetch()
            time.sleep(every)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def wait_count(count: Callable[[], int], expected: int, what: str, timeout: float = 60) -> None:
    """Wait until `count()` (a merged count) is `expected`; at the deadline, fail with the last five
    counts seen and what `expected` counts (`what`, e.g. "tasks run")."""
    seen: list[int] = []

    def settled() -> bool:
        seen.append(count())
        return seen[-1] == expected

    try:
        wait_for(settled, timeout, f"the merged count to reach {expected}", interval=0.1)
    except AssertionError:
        raise AssertionError(f"merged counts {seen[-5:]}, {what} {expected}") from None


def terminate(
    proc: subprocess.Popen[Any], timeout: float, before_kill: Callable[[], object] | None = None
) -> None:
    """Stop a server as its operator would: SIGTERM, then `timeout` s to exit; if it is still running,
    `before_kill()` (e.g. kill its children) and SIGKILL. Does nothing to a process already gone."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        if before_kill is not None:
            before_kill()
        proc.kill()
        proc.wait(10)


def wait_ready(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait for a child's `ready` line on stdout, failing (not hanging) if it exits first or takes longer
    than `timeout` s."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        readable, _, _ = select.select([proc.stdout], [], [], 0.1)
        if readable:
            line = proc.stdout.readline()
            assert line == b"ready\n", f"target said {line!r} (exit code {proc.poll()})"
            return
        if proc.poll() is not None:
            raise AssertionError(f"target exited with {proc.returncode} before it was ready")
    raise AssertionError(f"target not ready in {timeout} s")


def kill(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a child if it still runs, reap it and close its pipes."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    close_streams(proc)


Holder = Callable[..., subprocess.Popen[bytes]]
"""The `holder` fixture (tests/conftest.py): starts tests/targets/coll_holder.py ARGS, ready."""


def perftop_json(
    *args: str, env: dict[str, str], timeout: float = 120, cwd: str | os.PathLike[str] | None = None
) -> Any:
    """`python -m perftop ARGS...` (a --json command) that must succeed: its stdout, parsed."""
    result = run_perftop(*args, env=env, timeout=timeout, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


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
