"""A pre-forking parent (like a gunicorn master): N worker processes each record known timings.

The parent itself runs no agent; each worker starts its own. Worker k observes 1000 values of
(k + 1) * 10 ms, so the merged p50 and the per-worker rows are known exactly.
"""

import multiprocessing
import sys
import time

import perftop


def worker(
    k: int, ready: "multiprocessing.synchronize.Event", stop: "multiprocessing.synchronize.Event"
) -> None:
    perftop.start(name=f"worker-{k}")
    for _ in range(1000):
        perftop.observe("request", (k + 1) * 10.0)
    perftop.count("handled", 1000)
    time.sleep(0.5)  # let the agent aggregate before saying ready
    ready.set()
    stop.wait()


def main() -> None:
    n = int(sys.argv[1])
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    readies = [ctx.Event() for _ in range(n)]
    procs = [ctx.Process(target=worker, args=(k, readies[k], stop)) for k in range(n)]
    for p in procs:
        p.start()
    for r in readies:
        r.wait(30)
    sys.stdout.write("ready " + " ".join(str(p.pid) for p in procs) + "\n")
    sys.stdout.flush()
    sys.stdin.readline()
    stop.set()
    for p in procs:
        p.join(10)


if __name__ == "__main__":
    main()
