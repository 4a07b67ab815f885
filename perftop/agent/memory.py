"""Memory actions run inside the monitored process: tracemalloc snapshots and diffs, and a forced GC.

Standard library only. The memory action keeps at most one previous snapshot, in grouped form (one entry per
distinct traceback), so what perftop holds between two calls stays bounded by the app's allocation sites.
"""

from __future__ import annotations

import gc
import os
import threading
import time
import tracemalloc
from typing import Any

from perftop.agent.pump import TICK_S, pump

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_AGENT_DIR = os.path.join(_PACKAGE_DIR, "agent")
_WIRE_DIR = os.path.join(_PACKAGE_DIR, "wire")
# Modules that only ever run on perftop's own threads: a trace passing through any of them is perftop's.
_AGENT_ONLY_MODULES = (
    "actions.py",
    "profiler.py",
    "memory.py",
    "threads.py",
    "server.py",
    "handlers.py",
    "pump.py",
)

_Group = dict[tracemalloc.Traceback, tuple[int, int]]


MAX_SNAPSHOT_BLOCKS = 200_000
"""Traced blocks above which a snapshot is refused unless asked for explicitly (`max_blocks`): the copy
stalls the app about 1 s per million blocks and grouping takes 6 to 16 s of CPU per million."""
BYTES_PER_TRACE = 50
"""tracemalloc's own memory per traced block (measured on CPython 3.11): the block count's estimate."""
TRACING_LEASE_S = 600.0
"""Tracing stops by itself this long after the last memory action (each one renews it): a viewer that went
away must not leave every allocation of the app slower for good."""


class _State:
    """What survives between two memory actions: the previous snapshot, grouped by traceback, and when
    tracing started by perftop stops by itself."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.previous: _Group | None = None
        self.previous_at = 0.0
        self.expires_at: float | None = None
        """When tracing that perftop started stops by itself (unix seconds), or None."""


class SnapshotTooLarge(Exception):
    """A snapshot would cost the app more than its budget; the message gives the estimate."""


def estimated_blocks() -> int:
    """About how many blocks tracemalloc traces now (from its own memory, without copying them)."""
    return tracemalloc.get_tracemalloc_memory() // BYTES_PER_TRACE


def _renew_lease(lease_s: float) -> None:
    """Tracing stops `lease_s` from now unless another memory action comes first (called under the lock;
    the agent thread calls `expire`)."""
    _state.expires_at = time.time() + lease_s


def expire(now: float) -> None:
    """Stop tracing once its lease ran out (the app's allocations go back to full speed)."""
    if _state.expires_at is not None and now >= _state.expires_at:
        with _state.lock:
            if _state.expires_at is not None and now >= _state.expires_at:
                _stop_locked()


def _stop_locked() -> None:
    _state.previous = None
    _state.expires_at = None
    tracemalloc.stop()


_state = _State()


_OWN_INNERMOST = (
    tracemalloc.__file__,
    "<unknown>",
    os.path.join(_PACKAGE_DIR, "__init__.py"),
)
_AGENT_ONLY_FILES = frozenset(os.path.join(_AGENT_DIR, module) for module in _AGENT_ONLY_MODULES)


def _is_apps(traceback: tracemalloc.Traceback) -> bool:
    """Whether an allocation is the app's: not made *in* agent code (its innermost frame), nor under a
    module that only runs on perftop's threads (any frame); app code merely wrapped by a perftop timer
    stays (only its innermost frame is matched)."""
    innermost = traceback[-1].filename
    if innermost in _OWN_INNERMOST or innermost.startswith((_AGENT_DIR + os.sep, _WIRE_DIR + os.sep)):
        return False
    return not any(frame.filename in _AGENT_ONLY_FILES for frame in traceback)


def _group(snapshot: tracemalloc.Snapshot) -> _Group:
    """The snapshot grouped by traceback, then perftop's own groups dropped: grouping first (in C) and
    filtering the few distinct tracebacks, rather than every trace (`filter_traces` matched each frame of
    each trace with fnmatch: 66 s for 300k traces)."""
    return {
        stat.traceback: (stat.size, stat.count)
        for stat in snapshot.statistics("traceback")
        if _is_apps(stat.traceback)
    }


def _frames(traceback: tracemalloc.Traceback) -> list[dict[str, Any]]:
    """Traceback frames, innermost last (tracemalloc already orders them oldest first)."""
    return [{"file": frame.filename, "line": frame.lineno} for frame in traceback]


def _by_line(groups: _Group, top: int) -> list[dict[str, Any]]:
    """Sizes per innermost line, biggest first, each with the traceback of its largest contributor."""
    lines: dict[tuple[str, int], list[Any]] = {}
    for traceback, (size, count) in groups.items():
        innermost = traceback[-1]
        key = (innermost.filename, innermost.lineno)
        row = lines.get(key)
        if row is None:
            lines[key] = [size, count, traceback, size]
        else:
            row[0] += size
            row[1] += count
            if size > row[3]:
                row[2], row[3] = traceback, size
    ranked = sorted(lines, key=lambda k: (-lines[k][0], k))[:top]
    return [
        {
            "file": key[0],
            "line": key[1],
            "size_bytes": lines[key][0],
            "count": lines[key][1],
            "traceback": _frames(lines[key][2]),
        }
        for key in ranked
    ]


def _diff(new: _Group, old: _Group, top: int) -> list[dict[str, Any]]:
    """Change per innermost line between two grouped snapshots: growth first (largest), then shrinkage."""
    lines: dict[tuple[str, int], list[Any]] = {}

    def add(traceback: tracemalloc.Traceback, size_diff: int, count_diff: int, size: int, count: int) -> None:
        innermost = traceback[-1]
        key = (innermost.filename, innermost.lineno)
        row = lines.get(key)
        if row is None:
            lines[key] = [size_diff, count_diff, size, count, traceback, abs(size_diff)]
            return
        row[0] += size_diff
        row[1] += count_diff
        row[2] += size
        row[3] += count
        if abs(size_diff) > row[5]:
            row[4], row[5] = traceback, abs(size_diff)

    for traceback, (size, count) in new.items():
        old_size, old_count = old.get(traceback, (0, 0))
        if size != old_size or count != old_count:
            add(traceback, size - old_size, count - old_count, size, count)
    for traceback, (old_size, old_count) in old.items():
        if traceback not in new:
            add(traceback, -old_size, -old_count, 0, 0)
    changed = [k for k in lines if lines[k][0] != 0 or lines[k][1] != 0]
    ranked = sorted(changed, key=lambda k: (lines[k][0] <= 0, -abs(lines[k][0]), k))[:top]
    return [
        {
            "file": key[0],
            "line": key[1],
            "size_diff_bytes": lines[key][0],
            "count_diff": lines[key][1],
            "size_bytes": lines[key][2],
            "count": lines[key][3],
            "traceback": _frames(lines[key][4]),
        }
        for key in ranked
    ]


def memory_action(
    frames: int,
    top: int,
    stop: bool,
    max_blocks: int = MAX_SNAPSHOT_BLOCKS,
    lease_s: float = TRACING_LEASE_S,
) -> dict[str, Any]:
    """Start tracing (first call), snapshot and diff against the previous snapshot, or stop tracing.

    A snapshot of more than `max_blocks` traced blocks is refused with an estimate of its cost
    (SnapshotTooLarge), before anything is copied. Tracing stops by itself `lease_s` after the last call."""
    with _state.lock:
        if stop:
            was_tracing = tracemalloc.is_tracing()
            _stop_locked()
            return {
                "tracing": False,
                "stopped": was_tracing,
                "started": False,
                "traced_bytes": 0,
                "peak_bytes": 0,
                "overhead_bytes": 0,
                "top": [],
                "diff": [],
                "snapshot_at": time.time(),
            }
        started = False
        if not tracemalloc.is_tracing():
            _state.previous = None
            tracemalloc.start(frames)
            started = True
        blocks = estimated_blocks()
        if blocks > max_blocks:
            _renew_lease(lease_s)
            raise SnapshotTooLarge(
                f"tracemalloc traces about {blocks:,} blocks: a snapshot would stall the app about "
                f"{blocks / 1e6:.1f} s and take {blocks * 6 / 1e6:.0f} to {blocks * 16 / 1e6:.0f} s "
                "of its CPU; "
                f"refused (budget {max_blocks:,} blocks: ask for more with max_blocks, or stop tracing)"
            )
        try:
            snapshot = tracemalloc.take_snapshot()
            traced_blocks = len(snapshot.traces)
            taken_at = time.time()
            groups = _group(snapshot)
            del snapshot
            previous = _state.previous
            diff = [] if previous is None else _diff(groups, previous, top)
            result: dict[str, Any] = {
                "tracing": True,
                "started": started,
                "baseline": previous is None,
                "frames": tracemalloc.get_traceback_limit(),
                "top": _by_line(groups, top),
                "diff": diff,
                "snapshot_at": taken_at,
                "previous_snapshot_at": _state.previous_at if previous is not None else None,
            }
            _state.previous = groups
            _state.previous_at = taken_at
        except BaseException:
            if started:
                _stop_locked()
            raise
        _renew_lease(lease_s)
        result["stops_at"] = _state.expires_at
        result["blocks"] = traced_blocks
        result["blocks_estimated"] = blocks
        traced, peak = tracemalloc.get_traced_memory()
        result["traced_bytes"] = traced
        result["peak_bytes"] = peak
        result["overhead_bytes"] = tracemalloc.get_tracemalloc_memory()
        return result


def tracing_state() -> dict[str, Any]:
    """Whether tracemalloc is on, what it costs and when perftop stops it (the `memory` of `stats`, so a
    viewer always shows it)."""
    tracing = tracemalloc.is_tracing()
    return {
        "tracing": tracing,
        "overhead_bytes": tracemalloc.get_tracemalloc_memory() if tracing else 0,
        "blocks": estimated_blocks() if tracing else 0,
        "stops_at": _state.expires_at if tracing else None,
    }


# ---------------------------------------------------------------------------------------------------------
# Forced garbage collection


def rss_bytes() -> int | None:
    """Current resident set size of this process, from /proc (Linux), else None."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            fields = statm.read().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def gc_action(generation: int, count_objects: bool) -> dict[str, Any]:
    """Collect generations 0..`generation` in turn, reporting what each freed and how long it paused."""
    objects_before = len(gc.get_objects()) if count_objects else None
    rss_before = rss_bytes()
    counts_before = list(gc.get_count())
    garbage_before = len(gc.garbage)
    per_generation: list[int] = [0, 0, 0]
    durations: list[float] = [0.0, 0.0, 0.0]
    clock = time.perf_counter
    start = clock()
    for gen in range(generation + 1):
        began = clock()
        per_generation[gen] = gc.collect(gen)
        durations[gen] = (clock() - began) * 1000.0
    duration_ms = (clock() - start) * 1000.0
    counts_after = list(gc.get_count())
    rss_after = rss_bytes()
    return {
        "collected": sum(per_generation),
        "collected_by_generation": per_generation,
        "duration_ms": round(duration_ms, 3),
        "duration_ms_by_generation": [round(d, 3) for d in durations],
        "generation": generation,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "counts_before": counts_before,
        "counts_after": counts_after,
        "thresholds": list(gc.get_threshold()),
        "enabled": gc.isenabled(),
        "uncollectable": len(gc.garbage),
        "uncollectable_new": len(gc.garbage) - garbage_before,
        "objects_before": objects_before,
        "objects_after": len(gc.get_objects()) if count_objects else None,
    }


def _expire_now() -> None:
    expire(time.time())


pump.every(TICK_S, _expire_now, "memory-expire", "could not stop tracing at the end of its lease")
