"""Cost per task of perftop's zero-code Celery timing, on Celery's own code path.

A Celery app of one task runs N tasks eagerly (`Task.apply`: the worker's tracer, the same signals, no
broker), bare and then with `perftop.agent.tasks.instrument_celery` connected as `perftop run` does it,
alternating rounds in one process; prints the median per-task CPU time of each and the difference, and the
cost of stamping a message at publish (`before_task_publish`). Bare Celery skips its signals when no
receiver is connected, so the difference is all perftop's: the signal dispatch and the receivers.

    .venv/bin/python tests/perf/bench_celery.py [--tasks 3000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any


def per_task_us(task: Any, n: int) -> float:
    """CPU time of this thread per eager run: less at the mercy of a shared machine's scheduling than wall
    time (the agent thread's aggregation, off the hot path, is not in it)."""
    apply = task.apply
    t0 = time.thread_time()
    for i in range(n):
        apply((i,))
    return (time.thread_time() - t0) / n * 1e6


def connect(signals: Any, on: bool) -> None:
    from perftop.agent import tasks

    if on:
        tasks.instrument_celery(signals)
        return
    for name in ("task_prerun", "task_postrun", "task_failure", "before_task_publish"):
        getattr(signals, name).disconnect(dispatch_uid=f"perftop.{name}")


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    from celery import Celery, signals

    app = Celery("bench", set_as_current=False)

    @app.task(name="bench.double")
    def double(x: int) -> int:
        return 2 * x

    per_task_us(double, 500)  # warm-up
    bare: list[float] = []
    timed: list[float] = []
    for _ in range(args.rounds):
        connect(signals, False)
        bare.append(per_task_us(double, args.tasks))
        connect(signals, True)
        timed.append(per_task_us(double, args.tasks))
    b, t = statistics.median(bare), statistics.median(timed)
    out = sys.stdout.write
    out(f"eager task, bare: {b:.2f} µs, with perftop {t:.2f} µs a task: {t - b:+.2f} µs")
    out(f" (median of {args.rounds})\n")

    connect(signals, True)
    send = signals.before_task_publish.send
    stamps: list[float] = []
    for _ in range(args.rounds):
        t0 = time.thread_time()
        for i in range(args.tasks):
            send(sender="bench.double", headers={"id": str(i), "task": "bench.double"}, body=None)
        stamps.append((time.thread_time() - t0) / args.tasks * 1e6)
    out(f"publish stamp: {statistics.median(stamps):.2f} µs a message, signal dispatch included\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
