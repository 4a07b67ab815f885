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
import multiprocessing
import os
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import perftop
from perftop.agent import server
from tests.targets.line_target import (
    Command,
    run_count,
    run_gauge,
    run_observe,
    run_work,
    samples,
    serve,
    work,
)

__all__ = ["samples"]


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


_stop_spinning = [False]


def _spin(slot: list[int]) -> None:
    stop = _stop_spinning
    while not stop[0]:
        spin_once()
        slot[0] += 1


def _mp_worker(go: Any) -> None:
    work(1)
    go.wait(60)


class Commands:
    """The commands beyond the shared ones, with the state they keep between lines."""

    def __init__(self, socket_dir: str) -> None:
        self.socket_dir = socket_dir
        self.counts: list[list[int]] = []
        self.spinners: list[threading.Thread] = []
        self.go: Any = None
        self.worker: Any = None

    def errors(self, args: list[str]) -> str:
        k, v = int(args[0]), int(args[1])
        for kind, times in ((KeyError, k), (ValueError, v)):
            for _ in range(times):
                with contextlib.suppress(kind):
                    fails(kind)
        return f"done {k} {v}"

    def run_async(self, args: list[str]) -> str:
        n = int(args[0])

        async def run() -> None:
            for i in range(n):
                await async_work(i)

        asyncio.run(run())
        return f"done {n}"

    def timer(self, args: list[str]) -> str:
        n = int(args[0])
        for _ in range(n):
            with perftop.timer("block"):
                pass
        return f"done {n}"

    def spin(self, args: list[str]) -> str:
        for _ in range(int(args[0])):
            slot = [0]
            self.counts.append(slot)
            thread = threading.Thread(target=_spin, args=(slot,), name="spinner", daemon=True)
            thread.start()
            self.spinners.append(thread)
        return f"spinning {len(self.counts)}"

    def progress(self, args: list[str]) -> str:
        return f"progress {sum(slot[0] for slot in self.counts)}"

    def unspin(self, args: list[str]) -> str:
        _stop_spinning[0] = True
        for thread in self.spinners:
            thread.join()
        return f"unspun {sum(slot[0] for slot in self.counts)}"

    def samples(self, args: list[str]) -> str:
        values = samples(args[0], int(args[1]), int(args[2]))
        for ms in values:
            perftop.observe(args[0], ms)
        return f"done {len(values)}"

    def workers(self, args: list[str]) -> str:
        pids = []
        for i in range(int(args[0])):
            pid = os.fork()
            if pid == 0:
                sys.stdin.close()
                for ms in samples(args[1], i, int(args[2])):
                    perftop.observe(args[1], ms)
                threading.Event().wait()
            pids.append(pid)
        return "workers " + " ".join(map(str, pids))

    def mpstart(self, args: list[str]) -> str:
        ctx = multiprocessing.get_context("fork")
        self.go = ctx.Event()
        self.worker = ctx.Process(target=_mp_worker, args=(self.go,))
        self.worker.start()
        return f"mp {self.worker.pid}"

    def mpjoin(self, args: list[str]) -> str:
        self.go.set()
        self.worker.join(30)
        return f"joined {self.worker.exitcode}"

    def fork(self, args: list[str]) -> str:
        pid = os.fork()
        if pid == 0:
            # The child: serve until killed; stdin belongs to the parent.
            sys.stdin.close()
            threading.Event().wait()
        return f"forked {pid}"

    def stop(self, args: list[str]) -> str:
        perftop.stop()
        return "stopped"

    def start(self, args: list[str]) -> str:
        perftop.start(name=args[0] if args else None, socket_dir=self.socket_dir)
        return f"started {server.socket_file()}"


def main() -> None:
    socket_dir = sys.argv[1]
    name = sys.argv[2] if len(sys.argv) > 2 else "agent-target"
    perftop.start(name=name, socket_dir=socket_dir)
    own = Commands(socket_dir)
    commands: dict[str, Command] = {
        "work": run_work,
        "count": run_count,
        "gauge": run_gauge,
        "observe": run_observe,
        "errors": own.errors,
        "async": own.run_async,
        "timer": own.timer,
        "spin": own.spin,
        "progress": own.progress,
        "unspin": own.unspin,
        "samples": own.samples,
        "workers": own.workers,
        "mpstart": own.mpstart,
        "mpjoin": own.mpjoin,
        "fork": own.fork,
        "stop": own.stop,
        "start": own.start,
    }
    serve(commands)


if __name__ == "__main__":
    main()
