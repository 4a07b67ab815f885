"""The workers of a pre-fork server (gunicorn, uWSGI, Celery prefork, multiprocessing pools) as one service.

Users attach to the PID they know, the master's, which is idle while its workers do the work. Here:
`TreeCollector` samples the PID with all its descendants (tree totals, one row per worker, Python or not,
with departed workers kept and marked gone); `worker_figures` reads each worker's requests from its agent's
stats; `fan_out` runs one action in several agents at once and merges their results, keeping each
worker's own result under `per_pid`. No Textual here.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import psutil

from perftop.collectors.model import ProcessSample, ProcessTree, WorkerRow
from perftop.collectors.process import connection_inodes
from perftop.collectors.proclist import descendants_of
from perftop.wire.sketch import Sketch, SketchError

REQUEST_PREFIX = "http "
"""Timings of requests, as the WSGI/ASGI middleware names them (`http GET /orders/{id}`)."""
TASK_PREFIX = "celery "
"""Timings of Celery task runs, as `perftop run` names them (`celery proj.tasks.add`): a Celery worker's
requests are its tasks."""
NS_PER_MS = 1_000_000.0


@dataclass(frozen=True)
class WorkerFigures:
    """What one worker's agent says about it: its requests, and the query fingerprints it ran."""

    requests: int
    requests_per_s: float
    p99_ms: float | None
    fingerprints: frozenset[str]


def decode_timings(stats: Mapping[str, Any], prefixes: tuple[str, ...] = ("",)) -> dict[str, Sketch]:
    """The sketch of each timing of one agent's `stats` result (of those whose name starts with one of
    `prefixes`), decoded; malformed ones are skipped.

    The viewer decodes each sketch it is sent once, here; merged views, rows and worker figures are all
    derived from these."""
    out: dict[str, Sketch] = {}
    for name, timing in (stats.get("timings") or {}).items():
        if not name.startswith(prefixes):
            continue
        with contextlib.suppress(SketchError):
            out[name] = Sketch.from_dict(timing.get("sketch") if isinstance(timing, Mapping) else None)
    return out


def worker_figures(stats: Mapping[str, Any], sketches: Mapping[str, Sketch] | None = None) -> WorkerFigures:
    """Requests (every `http ...` and `celery ...` timing merged: count, rate over the stats' span, p99)
    and the query fingerprints of one agent's `stats` result; `sketches`: its timings already decoded
    (`decode_timings`), else they are decoded here."""
    merged = Sketch()
    if sketches is None:
        sketches = decode_timings(stats, (REQUEST_PREFIX, TASK_PREFIX))
    for name, sketch in sketches.items():
        if name.startswith((REQUEST_PREFIX, TASK_PREFIX)):
            merged.merge(sketch)
    span = float(stats.get("span_s") or 0.0)
    p99 = merged.quantile(0.99)
    queries = stats.get("queries") or {}
    fingerprints = frozenset(
        str(q["fingerprint"])
        for q in queries.get("queries") or []
        if isinstance(q, dict) and q.get("fingerprint")
    )
    return WorkerFigures(
        requests=merged.count,
        requests_per_s=merged.count / span if span > 0 else 0.0,
        p99_ms=None if p99 is None else p99 / NS_PER_MS,
        fingerprints=fingerprints,
    )


def descendants(pid: int) -> list[int]:
    """The live descendants of `pid` (children first), empty where it has none or cannot be read."""
    try:
        return [c.pid for c in descendants_of(psutil.Process(pid))]
    except psutil.Error:
        return []


def _pss(proc: psutil.Process) -> int | None:
    """The proportional set size (from smaps_rollup), None where it may not be read."""
    try:
        return int(getattr(proc.memory_full_info(), "pss", 0)) or None
    except (psutil.AccessDenied, psutil.NoSuchProcess, OSError, AttributeError):
        return None


class TreeCollector:
    """Samples a PID's descendants between samples of the PID itself (`ProcessCollector`).

    CPU percentages are measured since the previous sample (a worker's first sample has no baseline and
    reads 0). A worker that exits keeps its last row, marked gone, until `reset()`; a new one appears at
    the next sample. Connections are counted every `connections_every_s` seconds, as for the PID, and PSS
    (smaps_rollup: a walk of the page tables, milliseconds a process) read every `pss_every_s` seconds, a
    new worker's at once.
    """

    def __init__(
        self, pid: int, connections_every_s: float = 5.0, procfs: str = "/proc", pss_every_s: float = 5.0
    ) -> None:
        self.pid = pid
        self._procfs = procfs
        self._connections_every_s = connections_every_s
        self._connections_due = 0.0
        self._num_connections: int | None = None
        self._pss_every_s = pss_every_s
        self._pss_due = 0.0
        self._pss: dict[psutil.Process, int | None] = {}
        """The last PSS read of each process (keyed by PID and start time: a reused PID is read afresh)."""
        self._procs: dict[int, psutil.Process] = {}
        self._rows: dict[int, WorkerRow] = {}
        self._departed = 0
        self._root: psutil.Process | None = None
        with contextlib.suppress(psutil.Error):
            self._root = psutil.Process(pid)
        self.sample_children()

    def reset(self) -> None:
        """Forget departed workers (the user reset the view)."""
        self._rows = {pid: row for pid, row in self._rows.items() if not row.gone}
        self._departed = 0

    def sample_children(self) -> list[psutil.Process]:
        """The live descendants, each with a CPU baseline; departed ones marked gone."""
        try:
            children = [] if self._root is None else descendants_of(self._root)
        except psutil.Error:
            children = []
        live: list[psutil.Process] = []
        for child in children:
            known = self._procs.get(child.pid)
            if known is None or known != child:  # psutil compares PID and start time: a reused PID is new
                known = child
                self._procs[child.pid] = child
                with contextlib.suppress(psutil.Error):
                    child.cpu_percent(None)
            live.append(known)
        alive = {p.pid for p in live}
        now = time.time()
        for pid in list(self._procs):
            if pid not in alive:
                del self._procs[pid]
        for pid, row in list(self._rows.items()):
            if pid not in alive and not row.gone:
                self._rows[pid] = replace(row, gone=True, gone_at=now, cpu_percent=0.0)
                self._departed += 1
        return live

    def sample(
        self, root: ProcessSample, figures: Mapping[int, WorkerFigures] | None = None
    ) -> ProcessTree | None:
        """The tree of `root` (the PID's sample just taken); None while it has no descendants and none
        departed. `figures` are the workers' agent figures, by PID, where known."""
        figures = figures or {}
        live = self.sample_children()
        if not live and not self._rows:
            return None  # no tree: skip reading smaps_rollup, which costs milliseconds in a big process
        cpu, rss, threads = root.cpu_percent, root.rss_bytes, root.num_threads
        fds: int | None = root.num_fds
        now = time.monotonic()
        fresh = now >= self._pss_due
        if fresh:
            self._pss_due = now + self._pss_every_s
        kept, self._pss = self._pss, {}

        def pss_of(proc: psutil.Process) -> int | None:
            value = kept[proc] if proc in kept and not fresh else _pss(proc)
            self._pss[proc] = value
            return value

        pss = None if self._root is None else pss_of(self._root)
        pids = [root.pid]
        for proc in live:
            try:
                with proc.oneshot():
                    c_cpu = proc.cpu_percent(None)
                    mem = proc.memory_info()
                    c_threads = proc.num_threads()
                    name = proc.name()
                    ppid = proc.ppid()
                    started = proc.create_time()
                    try:
                        c_fds: int | None = proc.num_fds()
                    except psutil.AccessDenied:
                        c_fds = None
            except psutil.NoSuchProcess:
                continue  # exited while we read it: marked gone at the next sample
            except psutil.AccessDenied:
                continue
            c_pss = pss_of(proc)
            pids.append(proc.pid)
            cpu += c_cpu
            rss += mem.rss
            threads += c_threads
            fds = None if fds is None or c_fds is None else fds + c_fds
            pss = None if pss is None or c_pss is None else pss + c_pss
            fig = figures.get(proc.pid)
            self._rows[proc.pid] = WorkerRow(
                pid=proc.pid,
                ppid=ppid,
                name=name,
                started_at=started,
                cpu_percent=c_cpu,
                rss_bytes=mem.rss,
                num_threads=c_threads,
                has_agent=fig is not None,
                requests=None if fig is None else fig.requests,
                requests_per_s=None if fig is None else fig.requests_per_s,
                p99_ms=None if fig is None else fig.p99_ms,
            )
        if len(pids) == 1 and not self._rows:
            return None
        if now >= self._connections_due:
            self._num_connections = self._count_connections(pids)
            self._connections_due = now + self._connections_every_s
        rows = sorted(self._rows.values(), key=lambda r: (r.gone, r.started_at, r.pid))
        return ProcessTree(
            pids=tuple(pids),
            cpu_percent=cpu,
            rss_bytes=rss,
            pss_bytes=pss,
            num_threads=threads,
            num_fds=fds,
            num_connections=self._num_connections,
            workers=tuple(rows),
            departed=self._departed,
        )

    def _count_connections(self, pids: Iterable[int]) -> int | None:
        """Distinct sockets of the tree: a socket shared by several processes counts once."""
        seen: dict[bytes, int] = {}
        for pid in pids:
            try:
                seen.update(connection_inodes(pid, self._procfs))
            except FileNotFoundError:
                continue
            except PermissionError:
                return None
        return sum(seen.values())


def with_figures(tree: ProcessTree, figures: Mapping[int, WorkerFigures]) -> ProcessTree:
    """`tree` with its live workers' agent figures filled in, for a tree sampled before its agents were
    asked (a viewer's connections to them would otherwise count among the workers' fds)."""
    rows = tuple(
        w
        if w.gone or (fig := figures.get(w.pid)) is None
        else replace(
            w, has_agent=True, requests=fig.requests, requests_per_s=fig.requests_per_s, p99_ms=fig.p99_ms
        )
        for w in tree.workers
    )
    return replace(tree, workers=rows)


# -- departed workers' final stats ---------------------------------------------------------------------

FINAL_SUFFIX = ".final"
"""A forked worker's agent leaves `<pid>.final` beside its socket at exit: its since-start stats."""
FINAL_KEEP_S = 300.0
"""Final stats files of dead PIDs older than this are removed by the viewers that look for them."""
MAX_FINAL_BYTES = 64 * 1024 * 1024


def read_finals(
    directories: Iterable[str],
    parents: Collection[int],
    since: float,
    seen: set[str],
    live: Collection[int],
    parent_of: dict[int, int] | None = None,
) -> dict[int, dict[str, Any]]:
    """{pid: `stats`} of the workers of `parents` that exited at or after `since` (unix seconds), from
    the final stats their agents left; files of other processes, unreadable or malformed, are skipped,
    and so are those of `live` PIDs (still serving: a worker writes its file just before it closes its
    socket). The paths read are added to `seen` and not read again. Files of dead PIDs older than FINAL_KEEP_S
    are removed on the way. `parent_of`, where given, gets the parent PID of each one returned."""
    found: dict[int, dict[str, Any]] = {}
    now = time.time()
    for directory in dict.fromkeys(directories):
        try:
            names = [n for n in os.listdir(directory) if n.endswith(FINAL_SUFFIX)]
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            pid_text = name[: -len(FINAL_SUFFIX)]
            if not pid_text.isdigit() or path in seen or int(pid_text) in live:
                continue
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_size > MAX_FINAL_BYTES:
                    continue
                if now - st.st_mtime > FINAL_KEEP_S and not psutil.pid_exists(int(pid_text)):
                    os.unlink(path)
                    continue
                if st.st_mtime < since:
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as f:
                    doc = json.loads(f.read(MAX_FINAL_BYTES + 1))
            except (OSError, ValueError):
                continue
            seen.add(path)
            if not isinstance(doc, dict) or doc.get("pid") != int(pid_text) or doc.get("ppid") not in parents:
                continue
            exited = doc.get("exited_at")
            if isinstance(exited, (int, float)) and exited >= since and isinstance(doc.get("stats"), dict):
                found[int(pid_text)] = doc["stats"]
                if parent_of is not None:
                    parent_of[int(pid_text)] = int(doc["ppid"])
    return found


# -- fan-out of actions ----------------------------------------------------------------------------------


def fan_out(
    pids: Iterable[int], call: Callable[[int], Any], max_workers: int = 16
) -> tuple[dict[int, Any], dict[int, str]]:
    """Run `call(pid)` for every PID at once (a profile is taken in every worker over the same seconds);
    the results by PID, and the error message of each PID where it failed."""
    targets = list(dict.fromkeys(pids))
    results: dict[int, Any] = {}
    errors: dict[int, str] = {}
    if not targets:
        return results, errors
    with ThreadPoolExecutor(max_workers=min(max_workers, len(targets))) as pool:
        futures = {pid: pool.submit(call, pid) for pid in targets}
        for pid, future in futures.items():
            try:
                results[pid] = future.result()
            except Exception as exc:
                errors[pid] = str(exc) or type(exc).__name__
    return results, errors


def merge_action(action: str, results: Mapping[int, Any]) -> Any:
    """One result of the shape of a single process's (the CLI contract), from several workers' results.

    profile: samples, idle samples, per-function, per-line and call-tree counts summed, folded stacks
    added up (same stack, counts summed), every worker's threads named with its PID; gc: collected and
    RSS summed, duration the longest; memory: sizes summed, top and diff lines by (file, line) summed;
    threads: every worker's threads, each named with its PID. Other actions (profile_exact, explain): the
    first worker's result, the others are under `per_pid`.
    """
    items = [results[pid] for pid in sorted(results)]
    if not items:
        return None
    if len(items) == 1 and action != "threads":
        return items[0]
    if action == "profile":
        return _merge_profiles(results)
    if action == "gc":
        return _merge_gc(items)
    if action == "memory":
        return _merge_memory(items)
    if action == "threads":
        return [
            {**t, "name": f"[{pid}] {t.get('name')}", "pid": pid}
            for pid in sorted(results)
            for t in (results[pid] if isinstance(results[pid], list) else [])
            if isinstance(t, dict)
        ]
    return items[0]


def _sum_rows(rows: Iterable[Mapping[str, Any]], key: tuple[str, ...], counts: tuple[str, ...]) -> list[Any]:
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        k = tuple(row.get(f) for f in key)
        into = out.setdefault(k, {**row, **dict.fromkeys(counts, 0)})
        for c in counts:
            into[c] = (into.get(c) or 0) + (row.get(c) or 0)
    return list(out.values())


def _merge_tree(into: dict[str, Any], node: Mapping[str, Any]) -> None:
    """Add a profile's call tree `node` into `into` (children matched by function, file and line)."""
    into["total"] = (into.get("total") or 0) + (node.get("total") or 0)
    into["self"] = (into.get("self") or 0) + (node.get("self") or 0)
    children: list[dict[str, Any]] = into.setdefault("children", [])
    for child in node.get("children") or []:
        key = (child.get("name"), child.get("file"), child.get("line"))
        match = next((c for c in children if (c.get("name"), c.get("file"), c.get("line")) == key), None)
        if match is None:
            match = {k: v for k, v in child.items() if k not in ("total", "self", "children")}
            children.append(match)
        _merge_tree(match, child)


def _merge_profiles(results: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    items = [results[pid] for pid in sorted(results)]
    folded: dict[str, int] = {}
    for item in items:
        for line in str(item.get("folded") or "").splitlines():
            stack, _, n = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                folded[stack] = folded.get(stack, 0) + int(n)
    out: dict[str, Any] = {k: v for k, v in items[0].items() if k != "speedscope"}
    for key in ("top", "top_total"):
        rows = _sum_rows(
            (r for i in items for r in i.get(key) or []),
            ("function", "file", "line"),
            ("self_samples", "total_samples"),
        )
        rows.sort(key=lambda r: (-r["self_samples" if key == "top" else "total_samples"], str(r["function"])))
        out[key] = rows
    lines = _sum_rows((r for i in items for r in i.get("lines") or []), ("file", "line"), ("samples",))
    lines.sort(key=lambda r: -r["samples"])
    tree: dict[str, Any] = {"name": "all", "file": "", "line": 0}
    for item in items:
        if isinstance(item.get("tree"), dict):
            _merge_tree(tree, item["tree"])
    for key in ("samples", "idle_samples", "ticks", "missed_ticks", "dropped_samples"):
        out[key] = sum(int(i.get(key) or 0) for i in items)
    out.update(
        seconds=max(float(i.get("seconds") or 0.0) for i in items),
        threads=[
            {**t, "name": f"[{pid}] {t.get('name')}", "pid": pid}
            for pid in sorted(results)
            for t in results[pid].get("threads") or []
            if isinstance(t, dict)
        ],
        lines=lines,
        tree=tree,
        folded="\n".join(f"{stack} {n}" for stack, n in sorted(folded.items(), key=lambda kv: -kv[1])),
        cancelled=any(bool(i.get("cancelled")) for i in items),
    )
    return out


def _merge_gc(items: list[dict[str, Any]]) -> dict[str, Any]:
    def total(key: str) -> int:
        return sum(int(i.get(key) or 0) for i in items)

    def vector(key: str) -> list[int]:
        vectors = [list(i.get(key) or []) for i in items]
        width = max((len(v) for v in vectors), default=0)
        return [sum(v[k] for v in vectors if k < len(v)) for k in range(width)]

    return {
        **items[0],
        "collected": total("collected"),
        "collected_by_generation": vector("collected_by_generation"),
        "duration_ms": max(float(i.get("duration_ms") or 0.0) for i in items),
        "rss_before_bytes": total("rss_before_bytes"),
        "rss_after_bytes": total("rss_after_bytes"),
        "counts_before": vector("counts_before"),
        "counts_after": vector("counts_after"),
    }


def _merge_memory(items: list[dict[str, Any]]) -> dict[str, Any]:
    top = _sum_rows((r for i in items for r in i.get("top") or []), ("file", "line"), ("size_bytes", "count"))
    top.sort(key=lambda r: -r["size_bytes"])
    diff = _sum_rows(
        (r for i in items for r in i.get("diff") or []), ("file", "line"), ("size_diff_bytes", "count_diff")
    )
    diff.sort(key=lambda r: -abs(r["size_diff_bytes"]))
    return {
        **items[0],
        "tracing": all(bool(i.get("tracing")) for i in items),
        "traced_bytes": sum(int(i.get("traced_bytes") or 0) for i in items),
        "peak_bytes": sum(int(i.get("peak_bytes") or 0) for i in items),
        "overhead_bytes": sum(int(i.get("overhead_bytes") or 0) for i in items),
        "top": top,
        "diff": diff,
    }
