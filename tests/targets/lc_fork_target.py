"""An app that forks after `perftop.start()` while it records, driven by line commands on stdin.

Run as `python lc_fork_target.py` with PERFTOP_SOCKET_DIR set. A thread records `parent.work` all the
time. Commands (one answer line each):

  fork K           fork K children (os.fork); each records `child.work` 100 times, then its main
                   thread waits in C (idle) until killed                             -> forked PID...
  mp METHOD K      start K multiprocessing workers with start method METHOD (fork or forkserver; the
                   forkserver preloads a module that starts the agent, as `perftop run` does) -> mp PID...
  kill PID...      SIGKILL these children and reap them                              -> killed
  spin S           keep the main thread busy on the CPU for S seconds                -> spun
  preexec          start `sleep 30` through subprocess with a preexec_fn (the fork runs the
                   at-fork hooks, then execs)                                        -> preexec PID
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import perftop
from tests.targets.line_target import Command, serve

_mp: dict[int, Any] = {}
wait_in_c = time.sleep
"""A C-level wait under a name the profiler cannot recognise statically (as a database driver's wait):
only the thread's CPU clock tells it is idle."""


@perftop.time_it("parent.work")
def parent_work() -> None:
    pass


@perftop.time_it("child.work")
def child_work() -> None:
    pass


def record_forever() -> None:
    while True:
        for _ in range(200):
            parent_work()
        time.sleep(0.001)


def child_main() -> None:
    """A worker: records, then idles in its main thread (what idle detection must see) until killed."""
    for _ in range(100):
        child_work()
    while True:
        wait_in_c(3600)


def forked_child() -> None:
    try:
        child_main()
    finally:
        os._exit(0)


def run_fork(args: list[str]) -> str:
    pids = []
    for _ in range(int(args[0])):
        pid = os.fork()
        if pid == 0:
            forked_child()
        pids.append(pid)
    return "forked " + " ".join(map(str, pids))


def run_mp(args: list[str]) -> str:
    ctx: Any = multiprocessing.get_context(args[0])
    if args[0] == "forkserver":
        ctx.set_forkserver_preload(["tests.targets.lc_fork_preload"])
    procs = [ctx.Process(target=child_main, daemon=True) for _ in range(int(args[1]))]
    for proc in procs:
        proc.start()
        _mp[proc.pid] = proc
    return "mp " + " ".join(str(p.pid) for p in procs)


def run_preexec(args: list[str]) -> str:
    proc = subprocess.Popen(["sleep", "30"], preexec_fn=os.getpid)
    _mp[proc.pid] = proc
    return f"preexec {proc.pid}"


def run_spin(args: list[str]) -> str:
    until = time.monotonic() + float(args[0])
    while time.monotonic() < until:
        pass
    return "spun"


def run_kill(args: list[str]) -> str:
    for pid in map(int, args):
        os.kill(pid, signal.SIGKILL)
        proc = _mp.pop(pid, None)
        if isinstance(proc, subprocess.Popen):
            proc.wait()
        elif proc is not None:
            proc.join()
        else:
            os.waitpid(pid, 0)
    return "killed"


def main() -> None:
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # a stuck child's stacks, on demand
    perftop.start(name="fork-target")
    threading.Thread(target=record_forever, name="recorder", daemon=True).start()
    commands: dict[str, Command] = {
        "fork": run_fork,
        "mp": run_mp,
        "preexec": run_preexec,
        "spin": run_spin,
        "kill": run_kill,
    }
    serve(commands)


if __name__ == "__main__":
    main()
