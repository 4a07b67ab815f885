"""A program for `perftop run` on any CPython 3.10+: it imports threading only once the agent is up (the
agent's start-up thread imported it first), says whether threading still knows the main thread, times a
function 100 times, prints `ready` and waits for a line on stdin. It imports perftop without installing
it: the bootstrap makes the package importable."""

import os
import sys
import time

sock = os.path.join(os.environ["PERFTOP_SOCKET_DIR"], f"{os.getpid()}.sock")
deadline = time.monotonic() + 30
while not os.path.exists(sock) and time.monotonic() < deadline:
    time.sleep(0.01)

import threading  # noqa: E402 - after the agent's thread, on purpose

sys.stdout.write(f"main thread known: {threading.main_thread() is threading.current_thread()}\n")
sys.stdout.flush()

import perftop  # noqa: E402


@perftop.time_it("versions.work")
def work() -> int:
    return sum(range(100))


for _ in range(100):
    work()
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.readline()
