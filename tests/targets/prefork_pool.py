"""A multiprocessing.Pool of 3 workers recycled every 5 tasks, for `perftop run` (imports no perftop).

Usage: python prefork_pool.py TASKS [START_METHOD] (fork, the default; spawn; forkserver). Prints
`ready` once the pool's first workers run, waits for a line on stdin, maps TASKS tasks (each times itself
as `http POOL /task`, through the agent `perftop run` started), prints `done`, then waits for another
line before it exits.
"""

import multiprocessing as mp
import sys
import time


def task(n: int) -> int:
    import perftop

    with perftop.timer("http POOL /task"):
        time.sleep(0.002)
    return n


def main() -> None:
    ctx = mp.get_context(sys.argv[2] if len(sys.argv) > 2 else "fork")
    with ctx.Pool(3, maxtasksperchild=5) as pool:
        pool.map(task, range(3), chunksize=1)  # the first workers are up
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.readline()
        pool.map(task, range(int(sys.argv[1])), chunksize=1)
        sys.stdout.write("done\n")
        sys.stdout.flush()
        sys.stdin.readline()


if __name__ == "__main__":
    main()
