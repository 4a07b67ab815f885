"""What the benchmarks share (run by hand, not collected): a line of output, a wall-clock timing of a
call, and the demo service started with its agent in a private socket directory. Standard library only
at import (perftop is imported where it is used), so a benchmark imports only what it measures."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def out(line: str = "") -> None:
    """One line of the report on stdout, flushed (a long benchmark shows its progress)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def timed(fn: Callable[[], object], runs: int = 20) -> tuple[float, float]:
    """Median and max wall time of `fn()` in milliseconds over `runs` runs."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), max(times)


@contextlib.contextmanager
def demo_service(socket_dir: str, *args: str, timeout: float = 60) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m perftop.launch.demo_service ARGS` with its agent in `socket_dir`, once its agent
    answers (SystemExit if it does not within `timeout` s); killed at the end."""
    from perftop.launch.runner import wait_for_agent

    demo = subprocess.Popen(
        [sys.executable, "-m", "perftop.launch.demo_service", *args],
        env={**os.environ, "PERFTOP_SOCKET_DIR": socket_dir},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        if not wait_for_agent(demo.pid, socket_dir, timeout=timeout):
            raise SystemExit("the demo service did not start")
        yield demo
    finally:
        demo.kill()
        demo.wait()


@contextlib.contextmanager
def metric_agents(
    socket_dir: str, count: int, metrics: int, samples: int
) -> Iterator[list[subprocess.Popen[str]]]:
    """`count` instrumented processes (tests/targets/exp_target.py, named bench00...) with their agents in
    `socket_dir`, each once it has recorded `metrics` timings of `samples` samples; killed at the end."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for i in range(count):
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(ROOT / "tests" / "targets" / "exp_target.py"),
                        socket_dir,
                        f"bench{i:02d}",
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:
            assert proc.stdout is not None and proc.stdin is not None
            assert proc.stdout.readline().startswith("ready")
            proc.stdin.write(f"metrics {metrics} {samples}\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith("done")
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
