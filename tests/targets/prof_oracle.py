"""Profile-oracle target: a workload with a known split between Python work and waits, with a perftop agent.

    prof_oracle.py burst MS KIND  the main thread spins in pure Python for MS ms, then waits MS ms in KIND:
                                  select (select.select), sleep (time.sleep) or socket (recv with a timeout)
    prof_oracle.py threads        a thread spinning in pure Python beside one waiting on an Event; the main
                                  thread sleeps
    prof_oracle.py fork MS        forks; the child (its own agent) runs `burst MS select`, the parent waits
Prints "ready PID" (the process to profile) once that process's agent serves.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import threading
import time

import perftop


def spin(until: float) -> int:
    total = 0
    while time.perf_counter() < until:
        total += 1
    return total


def wait_select(seconds: float) -> None:
    select.select([], [], [], seconds)


def wait_sleep(seconds: float) -> None:
    time.sleep(seconds)


def wait_socket(sock: socket.socket, seconds: float) -> None:
    sock.settimeout(seconds)
    with contextlib.suppress(TimeoutError):
        sock.recv(1)


def burst(ms: float, kind: str) -> None:
    seconds = ms / 1000.0
    left, _right = socket.socketpair()
    while True:
        spin(time.perf_counter() + seconds)
        if kind == "select":
            wait_select(seconds)
        elif kind == "sleep":
            wait_sleep(seconds)
        else:
            wait_socket(left, seconds)


def crunch() -> None:
    while True:
        spin(time.perf_counter() + 0.05)


def idle_wait(event: threading.Event) -> None:
    while True:
        event.wait(0.1)


def main_wait() -> None:
    while True:
        time.sleep(0.05)


def ready(pid: int) -> None:
    deadline = time.monotonic() + 20
    while perftop.socket_file() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    sys.stdout.write(f"ready {pid}\n")
    sys.stdout.flush()


def run(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "fork":
        perftop.start()
        # Fork once the agent has settled: a thread caught mid-import at fork time leaves the child an import
        # lock nobody will release (the agent's own fork handling is not what this target tests).
        while perftop.socket_file() is None:
            time.sleep(0.02)
        time.sleep(0.5)
        child = os.fork()
        if child == 0:
            perftop.start()
            ready(os.getpid())
            burst(float(argv[1]), "select")
        os.waitpid(child, 0)
        return
    perftop.start()
    if mode == "burst":
        ready(os.getpid())
        burst(float(argv[1]), argv[2])
    else:
        event = threading.Event()
        threading.Thread(target=crunch, name="cpu-bound", daemon=True).start()
        threading.Thread(target=idle_wait, args=(event,), name="waiting", daemon=True).start()
        ready(os.getpid())
        main_wait()


if __name__ == "__main__":
    run(sys.argv[1:])
