"""A plain Python program to inject perftop into: it imports nothing from perftop (run it with -S).

Usage: python -S inj_target.py MODE STOP_FILE
Writes its PID and `ready` on stdout, then, until told to stop, in MODE:
  sleep   loops on time.sleep(0.2), stopping when STOP_FILE exists
  busy    loops on pure-Python arithmetic (never releasing the GIL on its own), same stop file
          (looked at twice a second)
  stdin   blocks in one read of stdin (a C call), stopping at the first line
  select  blocks in select() on stdin with a one-hour timeout, stopping when stdin is readable
  nodump  like stdin, after making itself non-dumpable (prctl PR_SET_DUMPABLE 0: no ptrace but root's)
then writes `bye` and exits 0.
"""

import os
import select
import sys
import time


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    mode, stop = sys.argv[1], sys.argv[2]
    if mode == "nodump":
        import ctypes

        if ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) != 0:
            sys.exit(3)
    say(str(os.getpid()))
    say("ready")
    if mode == "sleep":
        while not os.path.exists(stop):
            time.sleep(0.2)
    elif mode == "busy":
        # Looks at the stop file twice a second only: a system call releases the GIL, and a thread that
        # releases and retakes it every millisecond starves the other threads (CPython's GIL convoy).
        total, check_at = 0, time.monotonic()
        while time.monotonic() < check_at or not os.path.exists(stop):
            if time.monotonic() >= check_at:
                check_at = time.monotonic() + 0.5
            for i in range(20000):
                total += i * i
    elif mode in ("stdin", "nodump"):
        sys.stdin.readline()
    elif mode == "select":
        while not select.select([sys.stdin], [], [], 3600)[0]:
            pass
        sys.stdin.readline()
    else:
        sys.exit(2)
    say("bye")


if __name__ == "__main__":
    main()
