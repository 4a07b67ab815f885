"""On-demand actions run inside the monitored process: profile, profile_exact, memory, gc, threads.

The agent server calls `run_action` from its own worker thread (named "perftop-..."), never from an app
thread. Parameters are validated here; a bad one, or any failure inside an action, becomes an `ActionError`
whose text is a one-line message for the user, so nothing else ever escapes into the agent. Profilers and
tracing that an action switches on are switched off again before it returns, whatever happens, except
tracemalloc, which the memory action leaves on until asked to stop. Standard library only.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from perftop.agent.profiler import ThreadFilter

ACTION_NAMES: tuple[str, ...] = ("gc", "memory", "profile", "profile_exact", "threads")

MAX_PROFILE_SECONDS = 300.0
MAX_HZ = 1000.0

_log = logging.getLogger("perftop")
_logged: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


class ActionError(Exception):
    """An action could not run (bad parameter, busy, internal failure); str() is a one-line user message."""


def watch_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Register an asyncio event loop so that the threads action lists its tasks. Safe to call repeatedly."""
    from perftop.agent import threads

    threads.watch_loop(loop)


def run_action(name: str, params: dict[str, Any] | None, cancel: threading.Event) -> Any:
    """Run action `name` with `params`; returns a JSON-serialisable result or raises ActionError only.

    Parameters an action does not use are ignored (a command line may pass `seconds` to every action).
    `cancel` stops the long-running actions (profile, profile_exact) early with what they gathered.
    """
    handler = _HANDLERS.get(name) if isinstance(name, str) else None
    if handler is None:
        raise ActionError(f"unknown action {name!r} (known: {', '.join(ACTION_NAMES)})")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ActionError(f"{name}: parameters must be an object, got {type(params).__name__}")
    try:
        return handler(params, cancel)
    except ActionError:
        raise
    except Exception as exc:
        _log_once(name, exc)
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise ActionError(f"{name} failed: {type(exc).__name__}: {message}"[:500]) from exc


def _log_once(action: str, exc: Exception) -> None:
    """Log an internal failure with its traceback the first time it happens for this action and error type."""
    key = (action, type(exc).__name__)
    with _logged_lock:
        if key in _logged:
            return
        _logged.add(key)
    _log.warning("perftop action %r failed", action, exc_info=exc)


# ---------------------------------------------------------------------------------------------------------
# Parameters


def _number(
    params: dict[str, Any], key: str, default: float, low: float, high: float, *, integer: bool = False
) -> float:
    """A numeric parameter within [low, high]; numeric strings are accepted (they come from command lines)."""
    value = params.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ActionError(f"{key} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ActionError(f"{key} must be a number, got {value!r}") from None
    if math.isnan(number) or not low <= number <= high:
        raise ActionError(f"{key} must be between {_fmt(low)} and {_fmt(high)}, got {value!r}")
    if integer and number != int(number):
        raise ActionError(f"{key} must be a whole number, got {value!r}")
    return number


def _int(params: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    return int(_number(params, key, default, low, high, integer=True))


def _fmt(number: float) -> str:
    return str(int(number)) if number == int(number) else str(number)


def _bool(params: dict[str, Any], key: str, default: bool) -> bool:
    value = params.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0", "on", "off"):
        return value.lower() in ("true", "yes", "1", "on")
    raise ActionError(f"{key} must be true or false, got {value!r}")


def _choice(params: dict[str, Any], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = params.get(key)
    if value is None:
        return default
    if not isinstance(value, str) or value not in choices:
        raise ActionError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _thread_filter(params: dict[str, Any]) -> ThreadFilter:
    """`threads`: "all" (default), "main", a thread name or ident, or a list of them."""
    from perftop.agent.profiler import ThreadFilter

    value = params.get("threads", "all")
    if isinstance(value, list) and not value:
        raise ActionError("threads must not be an empty list")
    if value is None or value == "all":
        return ThreadFilter()
    items = value if isinstance(value, list) else [value]
    names: list[str] = []
    idents: list[int] = []
    for item in items:
        if item == "main":
            main = threading.main_thread().ident
            if main is not None:
                idents.append(main)
        elif isinstance(item, str) and item:
            names.append(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            idents.append(item)
        else:
            raise ActionError(
                f'threads must be "all", "main", a thread name or ident, or a list, got {item!r}'
            )
    return ThreadFilter(names, idents, everything=False)


# ---------------------------------------------------------------------------------------------------------
# Handlers


def _profile(params: dict[str, Any], cancel: threading.Event) -> Any:
    from perftop.agent import profiler

    seconds = _number(params, "seconds", 5.0, 0.01, MAX_PROFILE_SECONDS)
    hz = _number(params, "hz", 100.0, 1.0, MAX_HZ)
    selection = _thread_filter(params)
    include_idle = _bool(params, "include_idle", False)
    use_signal = _bool(params, "signal", True)
    return profiler.sample_profile(seconds, hz, cancel, selection, include_idle, use_signal)


def _profile_exact(params: dict[str, Any], cancel: threading.Event) -> Any:
    from perftop.agent import profiler

    seconds = _number(params, "seconds", 5.0, 0.01, MAX_PROFILE_SECONDS)
    top = _int(params, "top", 50, 1, 1000)
    sort = _choice(params, "sort", "total", ("total", "cumulative", "calls"))
    try:
        return profiler.exact_profile(seconds, cancel, top, sort)
    except profiler.ProfilerBusy as exc:
        raise ActionError(f"profile_exact: {exc}") from None


def _memory(params: dict[str, Any], cancel: threading.Event) -> Any:
    from perftop.agent import memory

    frames = _int(params, "frames", 10, 1, 100)
    top = _int(params, "top", 30, 1, 1000)
    stop = _bool(params, "stop", False)
    max_blocks = _int(params, "max_blocks", memory.MAX_SNAPSHOT_BLOCKS, 1, 100_000_000)
    lease_s = _int(params, "keep_s", int(memory.TRACING_LEASE_S), 10, 86_400)
    try:
        return memory.memory_action(frames, top, stop, max_blocks, float(lease_s))
    except memory.SnapshotTooLarge as exc:
        raise ActionError(f"memory: {exc}") from None


def _gc(params: dict[str, Any], cancel: threading.Event) -> Any:
    from perftop.agent import memory

    generation = _int(params, "generation", 2, 0, 2)
    count_objects = _bool(params, "count_objects", False)
    return memory.gc_action(generation, count_objects)


def _threads(params: dict[str, Any], cancel: threading.Event) -> Any:
    from perftop.agent import threads

    scan_loops = _bool(params, "scan_loops", True)
    return threads.thread_dump(scan_loops)


_HANDLERS: dict[str, Callable[[dict[str, Any], threading.Event], Any]] = {
    "gc": _gc,
    "memory": _memory,
    "profile": _profile,
    "profile_exact": _profile_exact,
    "threads": _threads,
}
