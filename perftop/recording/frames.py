"""From a recorded interval's JSON back to the viewer's types, and the window maths replay needs.

A recorded document is the `perftop snapshot --json` document plus a `recording` part (see
`perftop.recording.recorder.interval_document`); these functions rebuild the SystemSample, ProcessSample and
AgentView the TUI shows live, and narrow since-start agent figures to a window between two intervals.
Reading a document of the wrong shape raises one of `perftop.recording.errors.MALFORMED`.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

from perftop.collectors.model import (
    CgroupInfo,
    DiskIO,
    Limit,
    MemoryInfo,
    NetIO,
    Pressure,
    ProcessRow,
    ProcessSample,
    ProcessTree,
    SwapInfo,
    SystemSample,
    WorkerRow,
)
from perftop.recording.codec import unpack_sketch
from perftop.wire.sketch import Sketch, SketchError, bucket_value

if TYPE_CHECKING:
    from perftop.collectors.agent_view import AgentView


@functools.cache
def _limit_units() -> dict[str, str]:
    """Each resource limit's unit by name (the process collector, and psutil, only when first needed)."""
    from perftop.collectors.process import LIMIT_SPECS

    return {spec.name: spec.unit for spec in LIMIT_SPECS}


def system_from_json(doc: dict[str, Any]) -> SystemSample:
    """The SystemSample a recorded interval holds."""
    s, extra = doc["system"], doc["recording"]
    pressure = s.get("pressure")
    return SystemSample(
        taken_at=float(extra.get("system_taken_at") or doc.get("taken_at") or 0.0),
        interval_s=float(extra.get("interval_s") or 0.0),
        cpu_percent=float(s["cpu_percent"]),
        per_cpu_percent=tuple(float(x) for x in s["per_cpu_percent"]),
        load_avg=(float(s["load_avg"][0]), float(s["load_avg"][1]), float(s["load_avg"][2])),
        memory=MemoryInfo(**s["memory"]),
        swap=SwapInfo(**s["swap"]),
        disk_io=DiskIO(**s["disk_io"]),
        net_io=NetIO(**s["net_io"]),
        pressure=None if pressure is None else {name: Pressure.from_json(p) for name, p in pressure.items()},
    )


def process_from_json(doc: dict[str, Any]) -> ProcessSample:
    """The ProcessSample a recorded interval holds."""
    p, extra = doc["process"], doc["recording"]
    cgroup = p.get("cgroup")
    return ProcessSample(
        pid=int(p["pid"]),
        name=str(p["name"]),
        cmdline=tuple(p.get("cmdline") or ()),
        status=str(p.get("status", "")),
        username=str(p.get("username", "")),
        create_time=float(p.get("create_time") or 0.0),
        cpu_percent=float(p.get("cpu_percent") or 0.0),
        rss_bytes=int(p.get("rss_bytes") or 0),
        vms_bytes=int(p.get("vms_bytes") or 0),
        num_threads=int(p.get("num_threads") or 0),
        num_fds=p.get("num_fds"),
        num_connections=p.get("num_connections"),
        connections_sampled_at=extra.get("connections_sampled_at"),
        limits=tuple(
            Limit(name, lim.get("soft"), lim.get("hard"), lim.get("used"), _limit_units().get(name, ""))
            for name, lim in (p.get("limits") or {}).items()
        ),
        cgroup=None if cgroup is None else CgroupInfo(**cgroup),
        taken_at=float(extra.get("process_taken_at") or doc.get("taken_at") or 0.0),
        tree=tree_from_json(p.get("tree")),
    )


def tree_from_json(tree: Any) -> ProcessTree | None:
    """The process tree (totals and worker rows, departed ones marked gone) a recorded interval holds;
    None where the process had no children then (or the recording predates trees)."""
    if not isinstance(tree, dict):
        return None
    return ProcessTree(
        pids=tuple(int(p) for p in tree.get("pids") or ()),
        cpu_percent=float(tree.get("cpu_percent") or 0.0),
        rss_bytes=int(tree.get("rss_bytes") or 0),
        pss_bytes=tree.get("pss_bytes"),
        num_threads=int(tree.get("num_threads") or 0),
        num_fds=tree.get("num_fds"),
        num_connections=tree.get("num_connections"),
        workers=tuple(
            WorkerRow(
                pid=int(w["pid"]),
                ppid=int(w.get("ppid") or 0),
                name=str(w.get("name") or ""),
                started_at=float(w.get("started_at") or 0.0),
                cpu_percent=float(w.get("cpu_percent") or 0.0),
                rss_bytes=int(w.get("rss_bytes") or 0),
                num_threads=int(w.get("num_threads") or 0),
                has_agent=bool(w.get("has_agent")),
                requests=w.get("requests"),
                requests_per_s=w.get("requests_per_s"),
                p99_ms=w.get("p99_ms"),
                gone=bool(w.get("gone")),
                gone_at=w.get("gone_at"),
            )
            for w in tree.get("workers") or []
            if isinstance(w, dict) and "pid" in w
        ),
        departed=int(tree.get("departed") or 0),
    )


def process_row_from_json(doc: dict[str, Any]) -> ProcessRow:
    """The process-list row of the recorded process (what the picker shows in replay)."""
    p = process_from_json(doc)
    return ProcessRow(
        p.pid, p.name, " ".join(p.cmdline), p.username, p.cpu_percent, p.rss_bytes, p.num_threads
    )


def agent_from_json(doc: dict[str, Any]) -> AgentView | None:
    """The AgentView (since start) a recorded interval holds, or None where the process had no agent."""
    from perftop.collectors.agent_view import AgentView

    extra = doc["recording"].get("agent")
    if not isinstance(extra, dict):
        return None
    sketches: dict[str, Sketch] = {}
    for name, data in (extra.get("sketches") or {}).items():
        with contextlib.suppress(SketchError):
            sketches[name] = unpack_sketch(data)
    queries = None
    if isinstance(extra.get("queries"), dict):
        queries = {
            "queries": doc.get("queries") or [],
            "slow_queries": doc.get("slow_queries") or [],
            "pool": doc.get("pool"),
            **extra["queries"],
        }
    agent = doc.get("agent") or {}
    return AgentView(
        info=dict(
            extra.get("info") or {k: v for k, v in agent.items() if k not in ("merged_pids", "gone_pids")}
        ),
        pids=tuple(int(p) for p in agent.get("merged_pids") or ()),
        window_s=extra.get("window_s"),
        timings=dict(doc.get("timings") or {}),
        sketches=sketches,
        counters=dict(doc.get("counters") or {}),
        gauges=dict(doc.get("gauges") or {}),
        gc=extra.get("gc"),
        queries=queries,
        per_pid={int(pid): rows for pid, rows in (extra.get("per_pid") or {}).items()},
        errors_by_type=dict(extra.get("errors_by_type") or {}),
        overflow=dict(extra.get("overflow") or {}),
        taken_at=float(extra.get("taken_at") or doc.get("taken_at") or 0.0),
        gone_pids=tuple(int(p) for p in agent.get("gone_pids") or ()),
    )


def sketch_difference(later: Sketch, earlier: Sketch) -> Sketch:
    """The values `later` holds that `earlier` did not: both are since-start sketches of one metric, so
    the difference of their bucket counts is the distribution of what happened in between.

    The exact min and max of that span are unknown unless they moved; otherwise they are taken from the
    outermost buckets left (so quantiles stay within the bucket accuracy)."""
    out = Sketch()
    before = earlier.bins
    for i, n in later.bins.items():
        d = n - before.get(i, 0)
        if d > 0:
            out.add_bin(i, d)
    out.zero = max(0, later.zero - earlier.zero)
    bins = out.bins
    out.count = out.zero + sum(bins.values())
    if out.count == 0:
        return Sketch()
    out.errors = min(out.count, max(0, later.errors - earlier.errors))
    out.sum = max(0.0, later.sum - earlier.sum)
    if bins:
        low, high = bucket_value(min(bins)), bucket_value(max(bins))
        out.min = 0.0 if out.zero else (later.min if later.min < earlier.min else min(low, later.max))
        out.max = later.max if later.max > earlier.max else max(min(high, later.max), out.min)
    else:
        out.min = out.max = 0.0
    return out


def agent_over_window(now: AgentView, base: AgentView | None, span: float, window: float) -> AgentView:
    """`now` (since start) narrowed to what happened since `base`, `span` seconds earlier: sketches and
    counters are differences; gauges, GC and SQL stay as recorded at `now`. The rows are computed from
    the window's sketches as they are (no sketch is encoded or decoded here)."""
    from perftop.collectors.agent_client import timing_row
    from perftop.collectors.agent_view import AgentView

    sketches: dict[str, Sketch] = {}
    for name, sketch in now.sketches.items():
        before = None if base is None else base.sketches.get(name)
        window_sketch = sketch.copy() if before is None else sketch_difference(sketch, before)
        if window_sketch.count:
            sketches[name] = window_sketch
    counters: dict[str, dict[str, Any]] = {}
    for name, counter in now.counters.items():
        was = (base.counters.get(name) if base is not None else None) or {}
        value = counter.get("value") or 0
        delta = value - (was.get("value") or 0)
        counters[name] = {"value": value, "rate_per_s": delta / span if span > 0 else 0.0}
    return AgentView(
        info=now.info,
        pids=now.pids,
        window_s=window,
        timings={name: timing_row(sk, span) for name, sk in sketches.items()},
        sketches=sketches,
        counters=counters,
        gauges=now.gauges,
        gc=now.gc,
        queries=now.queries,
        per_pid={},
        errors_by_type=now.errors_by_type,
        overflow=now.overflow,
        taken_at=now.taken_at,
    )
