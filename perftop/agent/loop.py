"""Event-loop lag of an asyncio loop, recorded as a timing. Standard library only.

A callback scheduled every `interval` seconds notes how late it runs: that lateness is what every
coroutine of the loop waits behind a blocking call. It is recorded (in nanoseconds, like every timing)
under `asyncio.loop_lag`, so a viewer sees its percentiles next to the app's own timings. The cost is
one callback per interval (50 ms by default: a block shorter than that can go unseen) on the loop's thread.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import weakref
from typing import Any

from perftop.agent.pump import log_once
from perftop.agent.recorder import registry

DEFAULT_NAME = "asyncio.loop_lag"
_watched: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_lock = threading.Lock()


def watch_loop(
    loop: asyncio.AbstractEventLoop | None = None, interval: float = 0.05, name: str = DEFAULT_NAME
) -> None:
    """Record the lag of `loop` (default: the running loop) every `interval` seconds; idempotent per loop.

    May be called from any thread. Never raises: a failure is logged once.
    """
    try:
        target = loop if loop is not None else asyncio.get_running_loop()
        with _lock:
            if target in _watched:
                return
            _watched.add(target)
        metric = registry.timing(name)
        interval = max(0.001, float(interval))
        step_ns = int(interval * 1e9)

        def tick(expected_ns: int) -> None:
            now = time.perf_counter_ns()
            metric.append(max(0, now - expected_ns))
            if not target.is_closed():
                target.call_later(interval, tick, now + step_ns)

        def begin() -> None:
            target.call_later(interval, tick, time.perf_counter_ns() + step_ns)

        if _on_loop_thread(target):
            begin()
        else:
            target.call_soon_threadsafe(begin)
    except Exception as exc:
        log_once("loop-lag", "could not watch the asyncio loop", exc=exc)


def _on_loop_thread(loop: Any) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def discover_loops() -> int:
    """Watch every running asyncio loop found in asyncio's task registry (O(tasks); 3.10-3.13).

    Called from the agent thread, so an app that never calls `watch_loop` still gets its loop lag.
    Returns how many loops were newly watched. Never raises.
    """
    if "asyncio" not in sys.modules:
        return 0
    try:
        from perftop.agent.threads import task_registry_loops

        loops = task_registry_loops() or []
        new = 0
        for found in loops:
            if found.is_running() and found not in _watched:
                watch_loop(found)
                new += 1
        return new
    except Exception as exc:
        log_once("loop-discovery", "could not look for asyncio loops", exc=exc)
        return 0
