"""A small instrumented app for the agent tests, driven by line commands on stdin.

Run as `python agent_target.py SOCKET_DIR [NAME]`. It starts the agent, prints `ready <pid> <socket>`,
then answers each command line with one line:

  work N             call `work` (a @time_it no-op) N times                      -> done N
  errors K V         raise KeyError K times and ValueError V times in `fails`     -> done K V
  async N            run the async @time_it function N times                      -> done N
  timer N            N `with perftop.timer("block")` blocks                       -> done N
  count NAME N       perftop.count(NAME, N)                                       -> done
  gauge NAME V       perftop.gauge(NAME, V)                                       -> done
  observe NAME MS    perftop.observe(NAME, MS)                                    -> done
  spin T             start T threads calling `spin` as fast as they can           -> spinning T
  progress           calls made by the spinning threads so far                    -> progress N
  unspin             stop the spinning threads and wait for them                  -> unspun N
  samples DIST SEED N    observe N samples (ms) of `samples(DIST, SEED, N)`       -> done N
  workers K DIST N   fork K children; child i observes samples(DIST, i, N)         -> workers PID...
  mpstart            start a multiprocessing (fork) worker that waits for `mpjoin` -> mp PID
  mpjoin             let it finish (it returns normally) and join it               -> joined EXITCODE
  fork               fork: the child serves its own socket                         -> forked CHILD_PID
  stop               perftop.stop()                                               -> stopped
  start [NAME]       perftop.start() again, in the same socket dir                -> started SOCKET
  exit               sys.exit(0) (atexit removes the socket)                       -> (exits)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import random
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import perftop
from perftop.agent import server


@perftop.time_it("work")
def work(i: int) -> int:
    return i + 1


@perftop.time_it("fails")
def fails(kind: type[Exception]) -> None:
    raise kind("on purpose")


@perftop.time_it("async_work")
async def async_work(i: int) -> int:
    await asyncio.sleep(0)
    return i


@perftop.time_it("spin")
def spin_once() -> None:
    pass


def reply(line: str) -> None:
    """One answer line on stdout, flushed: the test is waiting for it."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def samples(dist: str, seed: int, n: int) -> list[float]:
    """Reproducible durations in ms: `lognormal` (median 20 ms) or `bimodal` (5 ms, and 10% at 200 ms)."""
    rng = random.Random(seed)
    if dist == "lognormal":
        return [rng.lognormvariate(math.log(20.0), 0.8) for _ in range(n)]
    if dist == "bimodal":
        return [abs(rng.gauss(5.0, 0.5) if rng.random() < 0.9 else rng.gauss(200.0, 20.0)) for _ in range(n)]
    raise ValueError(dist)


_stop_spinning = [False]


def _spin(slot: list[int]) -> None:
    stop = _stop_spinning
    while not stop[0]:
        spin_once()
        slot[0] += 1


def _mp_worker(go: Any) -> None:
    work(1)
    go.wait(60)


def main() -> None:
    socket_dir = sys.argv[1]
    name = sys.argv[2] if len(sys.argv) > 2 else "agent-target"
    perftop.start(name=name, socket_dir=socket_dir)
    counts: list[list[int]] = []
    spinners: list[threading.Thread] = []
    reply(f"ready {os.getpid()} {server.socket_file()}")
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "work":
            n = int(args[0])
            for i in range(n):
                work(i)
            reply(f"done {n}")
        elif cmd == "errors":
            k, v = int(args[0]), int(args[1])
            for kind, times in ((KeyError, k), (ValueError, v)):
                for _ in range(times):
                    with contextlib.suppress(kind):
                        fails(kind)
            reply(f"done {k} {v}")
        elif cmd == "async":
            n = int(args[0])

            async def run(n: int = n) -> None:
                for i in range(n):
                    await async_work(i)

            asyncio.run(run())
            reply(f"done {n}")
        elif cmd == "timer":
            n = int(args[0])
            for _ in range(n):
                with perftop.timer("block"):
                    pass
            reply(f"done {n}")
        elif cmd == "count":
            perftop.count(args[0], int(args[1]))
            reply("done")
        elif cmd == "gauge":
            perftop.gauge(args[0], float(args[1]))
            reply("done")
        elif cmd == "observe":
            perftop.observe(args[0], float(args[1]))
            reply("done")
        elif cmd == "spin":
            for _ in range(int(args[0])):
                slot = [0]
                counts.append(slot)
                thread = threading.Thread(target=_spin, args=(slot,), name="spinner", daemon=True)
                thread.start()
                spinners.append(thread)
            reply(f"spinning {len(counts)}")
        elif cmd == "progress":
            reply(f"progress {sum(slot[0] for slot in counts)}")
        elif cmd == "unspin":
            _stop_spinning[0] = True
            for thread in spinners:
                thread.join()
            reply(f"unspun {sum(slot[0] for slot in counts)}")
        elif cmd == "samples":
            values = samples(args[0], int(args[1]), int(args[2]))
            for ms in values:
                perftop.observe(args[0], ms)
            reply(f"done {len(values)}")
        elif cmd == "workers":
            pids = []
            for i in range(int(args[0])):
                pid = os.fork()
                if pid == 0:
                    sys.stdin.close()
                    for ms in samples(args[1], i, int(args[2])):
                        perftop.observe(args[1], ms)
                    threading.Event().wait()
                pids.append(pid)
            reply("workers " + " ".join(map(str, pids)))
        elif cmd == "mpstart":
            ctx = multiprocessing.get_context("fork")
            go = ctx.Event()
            worker = ctx.Process(target=_mp_worker, args=(go,))
            worker.start()
            reply(f"mp {worker.pid}")
        elif cmd == "mpjoin":
            go.set()
            worker.join(30)
            reply(f"joined {worker.exitcode}")
        elif cmd == "fork":
            pid = os.fork()
            if pid == 0:
                # The child: serve until killed; stdin belongs to the parent.
                sys.stdin.close()
                threading.Event().wait()
            reply(f"forked {pid}")
        elif cmd == "stop":
            perftop.stop()
            reply("stopped")
        elif cmd == "start":
            perftop.start(name=args[0] if args else None, socket_dir=socket_dir)
            reply(f"started {server.socket_file()}")
        elif cmd == "exit":
            sys.exit(0)
        else:
            reply(f"unknown {cmd}")


if __name__ == "__main__":
    main()
