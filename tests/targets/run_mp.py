"""A multiprocessing program for `perftop run` tests: it imports nothing from perftop.

Usage: python run_mp.py spawn|fork
Starts one child with that start method; prints `child PID` once the child runs, then waits for a line
on stdin, tells the child to stop, joins it, prints `joined EXITCODE`, and exits 0.
"""

import multiprocessing as mp
import sys
from typing import Any


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def child(started: Any, stop: Any) -> None:
    started.set()
    stop.wait(120)


def main() -> None:
    ctx: Any = mp.get_context(sys.argv[1])
    started, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=child, args=(started, stop))
    proc.start()
    if not started.wait(60):
        proc.kill()
        sys.exit(1)
    say(f"child {proc.pid}")
    sys.stdin.readline()
    stop.set()
    proc.join(60)
    say(f"joined {proc.exitcode}")


if __name__ == "__main__":
    main()
