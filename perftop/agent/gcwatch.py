"""Continuous recording of garbage-collector pauses through `gc.callbacks`. Standard library only.

Every collection's pause goes to the timing `gc.gen0`, `gc.gen1` or `gc.gen2` (nanoseconds), so latency
spikes can be lined up with collections; collections, objects collected and uncollectable objects are
counted per generation. The callback is a few list operations, and it never raises.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from perftop.agent.pump import log_once, pump
from perftop.agent.recorder import Timing, registry

_pc = time.perf_counter_ns


class _State:
    """Counts since start (or since the fork that created this process)."""

    def __init__(self) -> None:
        self.t0 = 0
        self.collections = [0, 0, 0]
        self.collected = [0, 0, 0]
        self.uncollectable = 0
        self.appenders: list[Any] = []


_state = _State()
_installed = False


def _callback(phase: str, info: dict[str, Any]) -> None:
    """The gc callback: remember when a collection starts; record its pause when it stops."""
    try:
        if phase == "start":
            _state.t0 = _pc()
            return
        pause = _pc() - _state.t0
        gen = info.get("generation", 0)
        if not 0 <= gen <= 2:
            return
        _state.appenders[gen](pause)
        _state.collections[gen] += 1
        _state.collected[gen] += info.get("collected", 0)
        _state.uncollectable += info.get("uncollectable", 0)
    except Exception:
        return  # a gc callback must never raise


def install() -> None:
    """Start recording gc pauses (idempotent)."""
    global _installed
    if _installed:
        return
    try:
        metrics: list[Timing] = [registry.timing(f"gc.gen{g}", internal=True) for g in range(3)]
        _state.appenders = [m.append for m in metrics]
        gc.callbacks.append(_callback)
        _installed = True
    except Exception as exc:
        log_once("gcwatch", "could not install the gc callback", exc=exc)


def uninstall() -> None:
    """Stop recording gc pauses."""
    global _installed
    if _callback in gc.callbacks:
        gc.callbacks.remove(_callback)
    _installed = False


def gc_stats() -> dict[str, Any]:
    """Collections and collected objects per generation, and uncollectable objects, since start."""
    return {
        "collections": list(_state.collections),
        "collected": list(_state.collected),
        "uncollectable": _state.uncollectable,
        "installed": _installed,
    }


def _after_fork_in_child() -> None:
    _state.collections = [0, 0, 0]
    _state.collected = [0, 0, 0]
    _state.uncollectable = 0


pump.on_fork(in_child=_after_fork_in_child)
