"""Test-side helpers for pre-forking servers and pools (not collected): a driver for workers_app.py, a
parent whose N workers run agents, and the CPU time of a set of processes (the oracle for tree totals)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil

APP = Path(__file__).resolve().with_name("workers_app.py")


@contextlib.contextmanager
def workers_app(n: int, env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """workers_app.py with `n` workers, once they are ready: the parent and its workers' PIDs (sorted).
    Told to stop at the end (a line on its stdin) and waited for."""
    parent = subprocess.Popen(
        [sys.executable, str(APP), str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline().split()
        assert line[0] == "ready", line
        yield parent, sorted(int(p) for p in line[1:])
    finally:
        if parent.poll() is None:
            assert parent.stdin is not None
            parent.stdin.write("\n")
            parent.stdin.flush()
            parent.wait(20)


def cpu_seconds(pids: list[int]) -> float:
    """The user and system CPU time the processes `pids` have used, in seconds, as psutil reads it."""
    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total
