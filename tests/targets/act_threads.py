"""Threads target: named threads blocked in known functions, and two asyncio loops with named tasks.

"loop-watched" is registered with perftop.agent.actions.watch_loop; "loop-hidden" is not, so only a heap
scan finds it. Command: ready (whether every thread and task has reached its blocking point).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from act_harness import Harness

from perftop.agent.actions import watch_loop

held_lock = threading.Lock()
held_lock.acquire()
never_set = threading.Event()
reached: set[str] = set()
reached_lock = threading.Lock()


def mark(name: str) -> None:
    with reached_lock:
        reached.add(name)


def sleeper() -> None:
    while True:
        mark("sleeper")
        time.sleep(3600)


def lock_waiter() -> None:
    mark("lock_waiter")
    held_lock.acquire()


def event_waiter() -> None:
    mark("event_waiter")
    never_set.wait()


async def ticker() -> None:
    while True:
        mark("ticker")
        await asyncio.sleep(0.05)


async def inner_wait(future: asyncio.Future[None]) -> None:
    mark("inner_wait")
    await future


async def outer_wait() -> None:
    await inner_wait(asyncio.get_running_loop().create_future())


async def hidden_worker() -> None:
    mark("hidden_worker")
    await asyncio.Event().wait()


async def watched_main() -> None:
    watch_loop(asyncio.get_running_loop())
    tasks = [asyncio.create_task(ticker(), name="ticker"), asyncio.create_task(outer_wait(), name="nested")]
    await asyncio.gather(*tasks)


async def hidden_main() -> None:
    await asyncio.create_task(hidden_worker(), name="hidden-task")


def ready(args: dict[str, Any]) -> bool:
    with reached_lock:
        return {"sleeper", "lock_waiter", "event_waiter", "ticker", "inner_wait", "hidden_worker"} <= reached


def main() -> None:
    for target, name in (
        (sleeper, "blocker-sleep"),
        (lock_waiter, "blocker-lock"),
        (event_waiter, "blocker-event"),
        (lambda: asyncio.run(watched_main()), "loop-watched"),
        (lambda: asyncio.run(hidden_main()), "loop-hidden"),
    ):
        threading.Thread(target=target, name=name, daemon=True).start()
    Harness({"ready": ready}).serve()


if __name__ == "__main__":
    main()
