"""A plain Python program idling (or busy) the way services do, to check that injecting leaves it intact.

Usage: python -S inj_idle.py MODE. Writes its PID and `ready` on stdout, then waits in MODE until its
standard input (a pipe, or for `recv` a socket) brings a line (a byte for `recv`), and writes one line:
  sleep   time.sleep(0.05) in a loop, polling stdin (non-blocking) after each:
          `bye sleep TICKS SECONDS SHORTEST` (ticks done, seconds spent, the shortest sleep seen)
  select  select() on stdin, one-hour timeout: `bye select LINE`
  asyncio an asyncio loop (epoll_wait) until a reader callback sees stdin readable: `bye asyncio LINE`
  recv    socket.recv(1) on stdin: `bye recv BYTE`
  event   threading.Event().wait(), set by a thread once it has read a line: `bye event LINE`
  stdin   one read of stdin: `bye stdin LINE`
  busy    pure-Python arithmetic, polling stdin (non-blocking) twice a second: `bye busy LINE`
  mixed   pure-Python arithmetic in the main thread while another thread blocks reading stdin:
          `bye mixed LINE` once that thread has its line
then exits 0. It imports nothing from perftop.
"""

import os
import select
import socket
import sys
import threading
import time


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def poll_stdin() -> str:
    try:
        return os.read(0, 100).decode().strip()
    except BlockingIOError:
        return ""


def main() -> None:
    mode = sys.argv[1]
    if mode in ("sleep", "busy"):
        os.set_blocking(0, False)
    if mode != "asyncio":  # that one says it once its loop runs
        say(str(os.getpid()))
        say("ready")
    start = time.monotonic()
    if mode == "sleep":
        ticks, shortest = 0, 1e9
        while not poll_stdin():
            before = time.monotonic()
            time.sleep(0.05)
            shortest = min(shortest, time.monotonic() - before)
            ticks += 1
        say(f"bye sleep {ticks} {time.monotonic() - start:.3f} {shortest:.4f}")
    elif mode == "select":
        while not select.select([0], [], [], 3600)[0]:
            pass
        say("bye select " + sys.stdin.readline().strip())
    elif mode == "asyncio":
        import asyncio

        async def wait_for_line() -> str:
            loop = asyncio.get_running_loop()
            readable = loop.create_future()
            loop.add_reader(0, lambda: readable.done() or readable.set_result(None))
            say(str(os.getpid()))
            say("ready")
            await readable
            return sys.stdin.readline().strip()

        say("bye asyncio " + asyncio.run(wait_for_line()))
    elif mode == "recv":
        say("bye recv " + socket.socket(fileno=0).recv(1).decode())
    elif mode == "event":
        event = threading.Event()
        lines = []

        def wake() -> None:
            lines.append(sys.stdin.readline().strip())
            event.set()

        threading.Thread(target=wake, daemon=True).start()
        event.wait()
        say("bye event " + lines[0])
    elif mode == "stdin":
        say("bye stdin " + sys.stdin.readline().strip())
    elif mode == "busy":
        total, check_at, line = 0, time.monotonic() + 0.5, ""
        while not line:
            if time.monotonic() >= check_at:
                check_at = time.monotonic() + 0.5
                line = poll_stdin()
            for i in range(20000):
                total += i * i
        say("bye busy " + line)
    elif mode == "mixed":
        lines: list[str] = []
        threading.Thread(target=lambda: lines.append(sys.stdin.readline().strip()), daemon=True).start()
        total = 0
        while not lines:
            for i in range(20000):
                total += i * i
        say("bye mixed " + lines[0])
    else:
        sys.exit(2)


if __name__ == "__main__":
    main()
