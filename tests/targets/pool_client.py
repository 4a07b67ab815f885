"""Test-side driver for prefork_pool.py run under `perftop run` (not collected)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

POOL = Path(__file__).resolve().with_name("prefork_pool.py")


@contextlib.contextmanager
def prefork_pool(env: dict[str, str], tasks: int, *method: str) -> Iterator[subprocess.Popen[str]]:
    """`perftop run -- python prefork_pool.py TASKS [METHOD]` with `env`, once its first workers run (its
    `ready` line); told to exit at the end (a line on its stdin) and waited for."""
    cmd = [sys.executable, "-m", "perftop", "run", "--", sys.executable, str(POOL), str(tasks), *method]
    pool = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert pool.stdin is not None and pool.stdout is not None
    try:
        assert pool.stdout.readline().strip() == "ready"
        yield pool
    finally:
        if pool.poll() is None:
            pool.stdin.write("\n")
            pool.stdin.flush()
            pool.wait(60)


def run_tasks(pool: subprocess.Popen[str]) -> None:
    """Let the pool map its TASKS tasks, and wait until it says it has."""
    assert pool.stdin is not None and pool.stdout is not None
    pool.stdin.write("go\n")
    pool.stdin.flush()
    assert pool.stdout.readline().strip() == "done"
