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

import math
import os
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import perftop
from perftop.agent import server


@perftop.time_it("work")
def work(i: int) -> int:
    return i * 2


def samples(seed: int, n: int) -> list[float]:
    """Reproducible durations in milliseconds: lognormal, median 20 ms (the test recomputes them)."""
    rng = random.Random(seed)
    return [rng.lognormvariate(math.log(20.0), 0.8) for _ in range(n)]


def reply(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    socket_dir, name = sys.argv[1], sys.argv[2]
    perftop.start(name=name, socket_dir=socket_dir)
    engine: Any = None
    reply(f"ready {os.getpid()} {server.socket_file()}")
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "work":
            n = int(args[0])
            for i in range(n):
                work(i)
            reply(f"done {n}")
        elif cmd == "samples":
            values = samples(int(args[1]), int(args[2]))
            for ms in values:
                perftop.observe(args[0], ms)
            reply(f"done {len(values)}")
        elif cmd == "metrics":
            k, n = int(args[0]), int(args[1])
            for index in range(k):
                for ms in samples(index, n):
                    perftop.observe(f"m{index:03d}", ms)
            reply(f"done {k}")
        elif cmd == "count":
            perftop.count(args[0], int(args[1]))
            reply("done")
        elif cmd == "gauge":
            perftop.gauge(args[0], float(args[1]))
            reply("done")
        elif cmd == "sql":
            from sqlalchemy import create_engine, text

            if engine is None:
                engine = create_engine("sqlite://")
                perftop.instrument_sqlalchemy(engine, slow_ms=1000)
            with engine.connect() as conn:
                for item in args[0].split(","):
                    table, times = item.split(":")
                    conn.execute(text(f"CREATE TABLE IF NOT EXISTS {table} (x INTEGER)"))
                    for _ in range(int(times)):
                        conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
            reply("done")
        elif cmd == "exit":
            sys.exit(0)
        else:
            reply(f"unknown {cmd}")


if __name__ == "__main__":
    main()
