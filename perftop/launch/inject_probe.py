"""A throwaway process for `perftop inject`'s preflight, run by the target's own interpreter (-I -S).

Usage: python -I -S inject_probe.py MODE. It prints `ready`, then waits in MODE the way an idle (or busy)
app does, until a line (or, for `recv`, a byte) arrives on its standard input, which is a pipe or, for
`recv`, a socket:
  sleep   ticks on time.sleep(0.05), looking at stdin (non-blocking) after each tick
  select  blocks in select() on stdin
  epoll   blocks in epoll_wait on stdin (as asyncio's loop does)
  recv    blocks in socket.recv on stdin
  event   blocks in threading.Event().wait(), set by a thread that reads stdin
  stdin   blocks in one read of stdin
  busy    pure-Python arithmetic, looking at stdin (non-blocking) ten times a second
Then prints `bye MODE` and exits 0: any other ending means the injection harmed it. Standard library only.
"""

import os
import select
import socket
import sys
import threading
import time


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _poll_stdin() -> bool:
    try:
        return bool(os.read(0, 1))
    except BlockingIOError:
        return False


def main() -> None:
    """Wait in the mode named by argv[1] until woken through stdin, then say `bye`."""
    mode = sys.argv[1]
    if mode in ("sleep", "busy"):
        os.set_blocking(0, False)
    _say("ready")
    if mode == "sleep":
        while not _poll_stdin():
            time.sleep(0.05)
    elif mode == "busy":
        total, check_at = 0, time.monotonic() + 0.1
        while time.monotonic() < check_at or not _poll_stdin():
            if time.monotonic() >= check_at:
                check_at = time.monotonic() + 0.1
            for i in range(20000):
                total += i * i
    elif mode == "select":
        while not select.select([0], [], [], 3600)[0]:
            pass
    elif mode == "epoll":
        poller = select.epoll()
        poller.register(0, select.EPOLLIN)
        while not poller.poll(3600):
            pass
    elif mode == "recv":
        if not socket.socket(fileno=0).recv(1):
            sys.exit(3)
    elif mode == "event":
        event = threading.Event()

        def wake() -> None:
            sys.stdin.readline()
            event.set()

        threading.Thread(target=wake, daemon=True).start()
        if not event.wait():
            sys.exit(3)
    elif mode == "stdin":
        sys.stdin.readline()
    else:
        sys.exit(2)
    _say("bye " + mode)


if __name__ == "__main__":
    main()
