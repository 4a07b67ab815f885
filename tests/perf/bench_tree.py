"""Benchmark (run by hand): cost of sampling a parent's tree (TreeCollector) per refresh, by worker count.

    .venv/bin/python tests/perf/bench_tree.py

Starts a parent with N forked children (N = 0, 4, 16, 64; each child allocates 8 MiB so smaps_rollup
has pages to walk), then times TreeCollector.sample() (connections counted and PSS read every time, the worst
case, and every 5 s, the default); median and max of 20 runs each.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from perftop.collectors.process import ProcessCollector
from perftop.collectors.workers import TreeCollector
from tests.perf._common import timed


def child(stop: multiprocessing.synchronize.Event) -> None:
    ballast = bytearray(8 * 1024 * 1024)
    stop.wait(600)
    del ballast


def main() -> None:
    ctx = multiprocessing.get_context("fork")
    for n in (0, 4, 16, 64):
        stop = ctx.Event()
        procs = [ctx.Process(target=child, args=(stop,)) for _ in range(n)]
        for p in procs:
            p.start()
        time.sleep(0.5 + n * 0.02)
        import os

        root = ProcessCollector(os.getpid()).sample()
        for every, label in ((0.0, "conns + PSS every sample"), (5.0, "conns + PSS every 5 s")):
            tree = TreeCollector(os.getpid(), connections_every_s=every, pss_every_s=every)
            median, worst = timed(lambda tree=tree, root=root: tree.sample(root))
            sys.stdout.write(f"{n:3d} children, {label:<26} median {median:8.2f} ms   max {worst:8.2f} ms\n")
        stop.set()
        for p in procs:
            p.join(10)


if __name__ == "__main__":
    main()
