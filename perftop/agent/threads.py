"""Thread dump of the monitored process, with the asyncio tasks of every event loop that can be reached.

Runs in the agent's action thread. Loops are found two ways: those registered with `watch_loop`, and (on
request) the loops of all tasks in asyncio's task registry, or where there is no usable registry, running
loop objects found by one pass over `gc.get_objects()`. A loop's tasks are read from another thread while
the loop runs, so every read is defensive and retried on a race. Standard library only.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import weakref
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

PERFTOP_THREAD_PREFIX = "perftop"
MAX_STACK = 256
MAX_TASKS = 1000
MAX_AWAIT_DEPTH = 64
_RETRIES = 5

_loops_lock = threading.Lock()
_weak_loops: weakref.WeakSet[Any] = weakref.WeakSet()
_strong_loops: list[Any] = []


def refresh_native_id() -> None:
    """In a forked child, make `threading` report the kernel id of the thread that forked (now the only one).

    CPython 3.10 to 3.12 keep the parent's id in `Thread.native_id` after a fork: thread dumps then named
    the parent's thread, and the per-thread CPU clock built from it read the parent's thread (or failed),
    so the profiler could not tell a waiting thread from a running one. Called by the agent's fork hook.
    """
    thread = threading.current_thread()
    native = threading.get_native_id()
    if getattr(thread, "_native_id", native) != native:
        thread._native_id = native  # type: ignore[attr-defined]


def set_native_thread_name(name: str) -> None:
    """Name the calling thread for the OS too (top -H, /proc/PID/task/TID/comm); Linux only, best effort.

    Written to /proc rather than through ctypes: a thread must import nothing to start, or a fork taken
    while another thread held that import's lock would leave the child's thread waiting forever.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w", encoding="utf-8") as f:
            f.write(name[:15])
    except (OSError, UnicodeError):
        return


def _after_fork_in_child() -> None:
    global _loops_lock
    _loops_lock = threading.Lock()
    refresh_native_id()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def watch_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Register an event loop so thread dumps list its tasks without scanning the heap. Idempotent."""
    with _loops_lock:
        try:
            _weak_loops.add(loop)
        except TypeError:
            # A loop type without weak references: keep a strong one, forgotten once the loop is closed.
            _strong_loops[:] = [lp for lp in _strong_loops if not _closed(lp)]
            if all(lp is not loop for lp in _strong_loops):
                _strong_loops.append(loop)


def _closed(loop: Any) -> bool:
    try:
        return bool(loop.is_closed())
    except Exception:
        return True


def _function_name(frame: FrameType) -> str:
    code = frame.f_code
    return str(getattr(code, "co_qualname", code.co_name))


def _frame_entry(frame: FrameType) -> dict[str, Any]:
    return {"file": frame.f_code.co_filename, "line": frame.f_lineno, "function": _function_name(frame)}


def _stack(frame: FrameType | None) -> tuple[list[dict[str, Any]], int]:
    """Frames from the outermost to the innermost (innermost last), and how many outer ones were cut."""
    chain: list[FrameType] = []
    omitted = 0
    while frame is not None:
        if len(chain) < MAX_STACK:
            chain.append(frame)
        else:
            omitted += 1
        frame = frame.f_back
    chain.reverse()
    return [_frame_entry(f) for f in chain], omitted


def _imported(name: str) -> Any:
    """The module `name` if it is imported and done initializing, else None: another thread may be
    importing it right now (an app importing asyncio while a thread dump runs), and a half-made module
    lacks attributes."""
    module = sys.modules.get(name)
    if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
        return None
    return module


def task_registry_loops() -> list[Any] | None:
    """Loops of every task in asyncio's own task registry: O(tasks). None where the registry is unusable.

    Python <= 3.11 keeps every task in `asyncio.tasks._all_tasks`, 3.12-3.13 in `_scheduled_tasks` plus
    `_eager_tasks`. From 3.14 tasks implemented in C are kept elsewhere, so the registry is not used.
    """
    tasks_module = _imported("asyncio.tasks")
    if tasks_module is None or sys.version_info >= (3, 14):
        return None
    registries = [getattr(tasks_module, n, None) for n in ("_all_tasks", "_scheduled_tasks", "_eager_tasks")]
    if all(registry is None for registry in registries):
        return None
    loops: dict[int, Any] = {}
    for registry in registries:
        if registry is None:
            continue
        for _attempt in range(_RETRIES):
            try:
                tasks = list(registry)
            except RuntimeError:
                continue
            for task in tasks:
                try:
                    loop = task.get_loop()
                except Exception:
                    continue
                loops[id(loop)] = loop
            break
    return list(loops.values())


def _running_loops(scan: bool) -> list[Any]:
    """Registered loops plus, when `scan`, the loops of every task (or, failing a registry, of the heap)."""
    with _loops_lock:
        candidates: list[Any] = [*_weak_loops, *_strong_loops]
    asyncio_module = _imported("asyncio")
    if scan and asyncio_module is not None:
        from_tasks = task_registry_loops()
        if from_tasks is not None:
            candidates.extend(from_tasks)
        else:
            loop_type = getattr(asyncio_module, "AbstractEventLoop", None)
            if isinstance(loop_type, type):
                candidates.extend(obj for obj in gc.get_objects() if isinstance(obj, loop_type))
    found: list[Any] = []
    seen: set[int] = set()
    for loop in candidates:
        if id(loop) in seen:
            continue
        seen.add(id(loop))
        try:
            if loop.is_running():
                found.append(loop)
        except Exception:
            continue
    return found


def _loop_thread(loop: Any, frames: dict[int, FrameType]) -> int | None:
    """The ident of the thread running `loop`: its own record, or the thread whose stack runs it."""
    ident = getattr(loop, "_thread_id", None)
    if isinstance(ident, int) and ident in frames:
        return ident
    for thread_ident, frame in frames.items():
        current: FrameType | None = frame
        while current is not None:
            if current.f_code.co_name in ("run_forever", "run_until_complete"):
                try:
                    if current.f_locals.get("self") is loop:
                        return thread_ident
                except Exception:
                    break
            current = current.f_back
    return None


def _all_tasks(loop: Any) -> list[Any]:
    """`asyncio.all_tasks(loop)` read from another thread: retried when the loop changes the set under us."""
    import asyncio

    for _attempt in range(_RETRIES):
        try:
            return list(asyncio.all_tasks(loop))[:MAX_TASKS]
        except RuntimeError:
            continue
    return []


def _await_chain(coro: Any) -> list[dict[str, Any]]:
    """The frames of a suspended coroutine and of every coroutine or generator it awaits (innermost last)."""
    stack: list[dict[str, Any]] = []
    current: Any = coro
    for _depth in range(MAX_AWAIT_DEPTH):
        frame = None
        for attribute in ("cr_frame", "gi_frame", "ag_frame"):
            frame = getattr(current, attribute, None)
            if frame is not None:
                break
        if frame is not None:
            stack.append(_frame_entry(frame))
        nxt = None
        for attribute in ("cr_await", "gi_yieldfrom", "ag_await"):
            nxt = getattr(current, attribute, None)
            if nxt is not None:
                break
        if nxt is None or not any(hasattr(nxt, a) for a in ("cr_frame", "gi_frame", "ag_frame")):
            break
        current = nxt
    return stack


def _waiting_on(task: Any) -> str | None:
    """A short, safe description of the future a task waits on (never a repr, which can be long or slow)."""
    waiter = getattr(task, "_fut_waiter", None)
    if waiter is None:
        return None
    get_name = getattr(waiter, "get_name", None)
    if callable(get_name):
        return f"Task {get_name()}"
    return type(waiter).__name__


def _task_entry(task: Any, current: Any) -> dict[str, Any]:
    coro = task.get_coro()
    if task is current:
        state = "running"
    elif task.cancelled():
        state = "cancelled"
    elif task.done():
        state = "done"
    else:
        state = "pending"
    return {
        "name": task.get_name(),
        "coro": str(getattr(coro, "__qualname__", type(coro).__name__)),
        "state": state,
        "stack": _await_chain(coro),
        "waiting_on": _waiting_on(task),
    }


def _loop_tasks(loop: Any) -> list[dict[str, Any]]:
    import asyncio

    try:
        current = asyncio.current_task(loop)
    except Exception:
        current = None
    entries: list[dict[str, Any]] = []
    for task in _all_tasks(loop):
        for _attempt in range(_RETRIES):
            try:
                entries.append(_task_entry(task, current))
                break
            except (RuntimeError, AttributeError, ValueError):
                continue
    entries.sort(key=lambda t: (t["state"] != "running", t["name"]))
    return entries


def thread_dump(scan_loops: bool) -> list[dict[str, Any]]:
    """Every thread with its stack (innermost last); threads running an event loop carry its tasks."""
    own = threading.get_ident()
    main_ident = threading.main_thread().ident
    frames = sys._current_frames()
    threads = {t.ident: t for t in threading.enumerate() if t.ident is not None}
    entries: dict[int, dict[str, Any]] = {}
    for ident, frame in frames.items():
        thread = threads.get(ident)
        name = thread.name if thread is not None else f"Thread-{ident}"
        stack, omitted = _stack(frame)
        entry: dict[str, Any] = {
            "name": name,
            "ident": ident,
            "native_id": thread.native_id if thread is not None else None,
            "daemon": thread.daemon if thread is not None else None,
            "main": ident == main_ident,
            "perftop": ident == own or name.startswith(PERFTOP_THREAD_PREFIX),
            "stack": stack,
        }
        if omitted:
            entry["frames_omitted"] = omitted
        entries[ident] = entry
    for loop in _running_loops(scan_loops):
        loop_ident = _loop_thread(loop, frames)
        if loop_ident is None or loop_ident not in entries:
            continue
        try:
            tasks = _loop_tasks(loop)
        except Exception:
            tasks = []
        entries[loop_ident].setdefault("tasks", []).extend(tasks)
    del frames
    return sorted(entries.values(), key=lambda e: (not e["main"], e["perftop"], e["name"], e["ident"]))
