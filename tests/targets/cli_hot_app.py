"""An instrumented app for the `perftop action` CLI tests: one hot function, named threads, a leak."""

import sys
import threading
import time

import perftop

LEAK: list[bytearray] = []


def burn_cpu_here() -> int:
    total = 0
    for i in range(200_000):
        total += i * i % 7
    return total


def leak_a_little() -> None:
    if len(LEAK) < 300_000:  # about 100 MB at most, however long a test keeps the app running
        LEAK.extend(bytearray(200) for _ in range(300))


def worker(stop: threading.Event) -> None:
    while not stop.is_set():
        with perftop.timer("work"):
            burn_cpu_here()
        leak_a_little()


def waiter(stop: threading.Event) -> None:
    stop.wait()


def main() -> None:
    perftop.start(name="cli-hot-app")
    stop = threading.Event()
    threading.Thread(target=worker, args=(stop,), name="burner", daemon=True).start()
    threading.Thread(target=waiter, args=(stop,), name="idle-waiter", daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()
    stop.set()
    time.sleep(0.1)


if __name__ == "__main__":
    main()
