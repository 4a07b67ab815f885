"""Benchmark (run by hand): cost of the OS collectors on this machine.

    .venv/bin/python tests/perf/bench_proclist.py

Times ProcessLister.sample() over every process here, ProcessCollector.sample() with and without the
connection count, SystemCollector.sample() and read_cgroup(); median and max of 20 runs each.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from perftop.collectors.cgroup import read_cgroup
from perftop.collectors.process import ProcessCollector, count_user_tasks
from perftop.collectors.proclist import ProcessLister
from perftop.collectors.system import SystemCollector
from tests.perf._common import timed


def report(label: str, figures: tuple[float, float]) -> None:
    sys.stdout.write(f"{label:<58} median {figures[0]:8.2f} ms   max {figures[1]:8.2f} ms\n")


def main() -> None:
    # Give this process some sockets, so counting connections has something to find.
    listener = socket.create_server(("127.0.0.1", 0))
    clients = [socket.create_connection(listener.getsockname()) for _ in range(20)]
    servers = [listener.accept()[0] for _ in clients]

    lister = ProcessLister()
    first = timed(lister.sample, runs=1)
    count = len(lister.sample())
    report(f"ProcessLister.sample() first call ({count} processes)", first)
    report(f"ProcessLister.sample() ({count} processes, objects reused)", timed(lister.sample))

    pid = os.getpid()
    never = ProcessCollector(pid, connections_every_s=1e9)
    never.sample()
    report("ProcessCollector.sample() without connections", timed(never.sample))
    always = ProcessCollector(pid, connections_every_s=0)
    sample = always.sample()
    report(f"ProcessCollector.sample() with connections ({sample.num_connections})", timed(always.sample))
    report("count_user_tasks(uid) (nproc usage, every 2 s)", timed(lambda: count_user_tasks(os.getuid())))
    report("read_cgroup(own pid)", timed(lambda: read_cgroup(pid)))

    system = SystemCollector()
    report("SystemCollector.sample()", timed(system.sample))

    for sock in (listener, *clients, *servers):
        sock.close()


if __name__ == "__main__":
    main()
