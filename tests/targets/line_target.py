"""What the line-command targets share (agent_target.py, exp_target.py, lc_target.py, lc_fork_target.py):
the `ready <pid> <socket>` line, the command loop (one command line in, one answer line out; `exit` exits
0, so atexit hooks run; an unknown command answers `unknown CMD`), the `work` timing, the commands every
target has, and the reproducible samples the tests recompute.
"""

from __future__ import annotations

import math
import os
import random
import sys
from collections.abc import Callable, Mapping

import perftop
from perftop.agent import server

Command = Callable[[list[str]], str]
"""A command: its arguments (the words after its name) in, its answer line out."""


@perftop.time_it("work")
def work(i: int) -> int:
    return i + 1


def samples(dist: str, seed: int, n: int) -> list[float]:
    """Reproducible durations in ms: `lognormal` (median 20 ms) or `bimodal` (5 ms, and 10% at 200 ms)."""
    rng = random.Random(seed)
    if dist == "lognormal":
        return [rng.lognormvariate(math.log(20.0), 0.8) for _ in range(n)]
    if dist == "bimodal":
        return [abs(rng.gauss(5.0, 0.5) if rng.random() < 0.9 else rng.gauss(200.0, 20.0)) for _ in range(n)]
    raise ValueError(dist)


def reply(line: str) -> None:
    """One answer line on stdout, flushed: the test is waiting for it."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_work(args: list[str]) -> str:
    """`work N`: call `work` N times."""
    n = int(args[0])
    for i in range(n):
        work(i)
    return f"done {n}"


def run_count(args: list[str]) -> str:
    """`count NAME N`: perftop.count(NAME, N)."""
    perftop.count(args[0], int(args[1]))
    return "done"


def run_gauge(args: list[str]) -> str:
    """`gauge NAME V`: perftop.gauge(NAME, V)."""
    perftop.gauge(args[0], float(args[1]))
    return "done"


def run_observe(args: list[str]) -> str:
    """`observe NAME MS`: perftop.observe(NAME, MS)."""
    perftop.observe(args[0], float(args[1]))
    return "done"


def serve(commands: Mapping[str, Command]) -> None:
    """Say `ready <pid> <socket>` (the agent is started by now), then answer command lines until `exit`."""
    reply(f"ready {os.getpid()} {server.socket_file()}")
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "exit":
            sys.exit(0)
        command = commands.get(cmd)
        reply(command(args) if command is not None else f"unknown {cmd}")
