"""Test-side helpers for the export, record/replay and web tests: run a perftop command as a real process
(through exp_cli.py), read its stderr line by line with deadlines, stop it whatever happens."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.targets.agent_harness import ROOT, target_env

CLI = Path(__file__).resolve().parent / "exp_cli.py"


class Command:
    """`perftop ARGS` running in the background (stdout discarded, stderr collected). With `group`, it
    runs in a process group of its own, killed whole at the end (for commands that start children)."""

    def __init__(self, *args: str, group: bool = False) -> None:
        self.group = group
        self.proc = subprocess.Popen(
            [sys.executable, str(CLI), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
            env=target_env(),
            start_new_session=group,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_line(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """The first stderr line (from now on) matching `pattern`; AssertionError at the deadline or exit."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout} s: {self.stderr}") from None
            if line is None:
                raise AssertionError(f"exited ({self.proc.poll()}) before {pattern!r}: {self.stderr}")
            match = re.search(pattern, line)
            if match:
                return match

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def __enter__(self) -> Command:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`perftop ARGS` to completion."""
    return subprocess.run(
        [sys.executable, str(CLI), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(ROOT),
        env=target_env(),
        check=False,
    )


def http_get(
    url: str, accept: str | None = None, timeout: float = 30.0, fresh: bool = False
) -> tuple[int, str, str]:
    """(status, content type, body) of a GET; `fresh` asks for no cached answer (Cache-Control)."""
    request = urllib.request.Request(url)
    if accept:
        request.add_header("Accept", accept)
    if fresh:
        request.add_header("Cache-Control", "no-cache")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()
