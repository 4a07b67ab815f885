"""An instrumented app for the export, recording and web tests, driven by line commands on stdin.

Run as `python exp_target.py SOCKET_DIR NAME`. It starts the agent, prints `ready <pid> <socket>` (as
agent_target.py does, so tests/targets/agent_harness.Target drives it), then answers
each command line with one line:

  work N                   call `work` (a @time_it function) N times                -> done N
  samples NAME SEED N      observe N lognormal durations (median 20 ms), see samples() -> done N
  metrics K N              K timings `m000`... each observing N samples(seed=index)  -> done K
  count NAME N             perftop.count(NAME, N)                                   -> done
  gauge NAME V             perftop.gauge(NAME, V)                                   -> done
  sql SPEC                 SPEC is `table:times,...`: `SELECT count(*) FROM table`  -> done
                           that many times each, on an instrumented in-memory SQLite
  exit                     exit 0 (atexit removes the socket)
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import perftop
from tests.targets import line_target
from tests.targets.line_target import Command, run_count, run_gauge, run_work, serve


def samples(seed: int, n: int) -> list[float]:
    """Reproducible durations in milliseconds: lognormal, median 20 ms (the test recomputes them)."""
    return line_target.samples("lognormal", seed, n)


def run_samples(args: list[str]) -> str:
    values = samples(int(args[1]), int(args[2]))
    for ms in values:
        perftop.observe(args[0], ms)
    return f"done {len(values)}"


def run_metrics(args: list[str]) -> str:
    k, n = int(args[0]), int(args[1])
    for index in range(k):
        for ms in samples(index, n):
            perftop.observe(f"m{index:03d}", ms)
    return f"done {k}"


class Sql:
    """`sql SPEC` on one instrumented in-memory SQLite engine, made at the first use."""

    def __init__(self) -> None:
        self.engine: Any = None

    def __call__(self, args: list[str]) -> str:
        from sqlalchemy import create_engine, text

        if self.engine is None:
            self.engine = create_engine("sqlite://")
            perftop.instrument_sqlalchemy(self.engine, slow_ms=1000)
        with self.engine.connect() as conn:
            for item in args[0].split(","):
                table, times = item.split(":")
                conn.execute(text(f"CREATE TABLE IF NOT EXISTS {table} (x INTEGER)"))
                for _ in range(int(times)):
                    conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
        return "done"


def main() -> None:
    socket_dir, name = sys.argv[1], sys.argv[2]
    # An empty young generation when the agent starts: the GC pauses it records (timings of their own)
    # then come from what the tests make the app do, not from what its imports happened to leave.
    gc.collect()
    perftop.start(name=name, socket_dir=socket_dir)
    commands: dict[str, Command] = {
        "work": run_work,
        "samples": run_samples,
        "metrics": run_metrics,
        "count": run_count,
        "gauge": run_gauge,
        "sql": Sql(),
    }
    serve(commands)


if __name__ == "__main__":
    main()
