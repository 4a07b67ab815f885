"""What the agents of one process (and of its children) report, merged into one view.

Sketches of several processes are merged bucket by bucket, never by averaging percentiles, so the p99 of a
gunicorn master is the p99 of all its workers' requests.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from perftop.collectors.agent_client import (
    AgentClient,
    AgentError,
    find_agent,
    find_child_agents,
    merge_stats,
    socket_dir,
    timing_row,
)
from perftop.collectors.requests import merge_requests, request_rows
from perftop.collectors.workers import WorkerFigures, decode_timings, read_finals, worker_figures
from perftop.wire.sketch import Sketch


@dataclass(frozen=True)
class AgentView:
    """The merged agent data of a PID (and its children), over one window."""

    info: dict[str, Any]
    """The `info` of the agent in the PID itself, or of the first child agent found."""
    pids: tuple[int, ...]
    """Every process whose agent is merged in."""
    window_s: float | None
    timings: dict[str, dict[str, Any]]
    """The CLI contract's `timings` rows by metric name."""
    sketches: dict[str, Sketch]
    """The merged sketch of each timing (values in ns), for histograms."""
    counters: dict[str, dict[str, Any]]
    gauges: dict[str, float]
    gc: dict[str, Any] | None
    queries: dict[str, Any] | None
    """`query_stats` of the SQL hook, or None where no engine is instrumented."""
    per_pid: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """Timings rows of each process separately, for the per-worker breakdown."""
    errors_by_type: dict[str, dict[str, int]] = field(default_factory=dict)
    overflow: dict[str, Any] = field(default_factory=dict)
    taken_at: float = 0.0
    figures: dict[int, WorkerFigures] = field(default_factory=dict)
    """Each process's requests and query fingerprints, for the worker table and for routing EXPLAIN."""
    gone_pids: tuple[int, ...] = ()
    """Merged processes that have exited: their last data is kept until the view is reset."""
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The CLI contract's `requests` rows by route (web requests timed by the middleware or `perftop run`)."""
    memory: dict[str, Any] | None = None
    """tracemalloc's state in the PID's own agent (tracing, overhead, when perftop stops it), or None."""

    def describe(self) -> str:
        name = self.info.get("name") or "unnamed"
        merged = f", {len(self.pids)} processes merged" if len(self.pids) > 1 else ""
        gone = f" ({len(self.gone_pids)} gone, last data kept)" if self.gone_pids else ""
        return f"{name} pid {self.info.get('pid')} python {self.info.get('python')}{merged}{gone}"

    @staticmethod
    def empty_json() -> dict[str, Any]:
        """The agent keys of the snapshot JSON where there is no agent."""
        return {
            "agent": None,
            "timings": {},
            "requests": {},
            "counters": {},
            "gauges": {},
            "queries": [],
            "slow_queries": [],
            "pool": None,
            "gc": None,
        }

    def to_json(self) -> dict[str, Any]:
        """The agent keys of the snapshot JSON (the CLI contract)."""
        queries = self.queries or {}
        gc = None
        if self.gc is not None:
            pauses = [self.sketches[k] for k in ("gc.gen0", "gc.gen1", "gc.gen2") if k in self.sketches]
            merged = Sketch()
            for sk in pauses:
                merged.merge(sk)
            p99 = merged.quantile(0.99)
            gc = {
                "collections": self.gc.get("collections"),
                "collected": self.gc.get("collected"),
                "uncollectable": self.gc.get("uncollectable"),
                "pause_p99_ms": None if p99 is None else p99 / 1e6,
                "pause_max_ms": merged.max / 1e6 if merged.count else None,
            }
        return {
            "agent": {**self.info, "merged_pids": list(self.pids), "gone_pids": list(self.gone_pids)},
            "timings": self.timings,
            "requests": self.requests,
            "counters": self.counters,
            "gauges": self.gauges,
            "queries": [{k: v for k, v in q.items() if k != "sketch"} for q in queries.get("queries", [])],
            "slow_queries": queries.get("slow_queries", []),
            "pool": queries.get("pool"),
            "gc": gc,
        }


def agent_info(client: AgentClient) -> dict[str, Any]:
    """The CLI contract's `agent` object, from the agent's hello."""
    h = client.hello
    return {
        "pid": h.pid,
        "protocol": h.protocol,
        "agent_version": h.agent_version,
        "python": h.python,
        "argv": h.argv,
        "started_at": h.started_at,
        "name": h.name,
    }


def build_view(
    results: dict[int, dict[str, Any]],
    infos: dict[int, dict[str, Any]],
    window: float | None,
    main_pid: int,
    gone: tuple[int, ...] = (),
) -> AgentView:
    """Merge the `stats` results of several agents (by PID) into one view; `gone`: those that exited.

    Each timing's sketch is decoded once (`decode_timings`): the merged sketches, the merged and
    per-process rows and the workers' figures are all derived from that one decode, and workers merge
    as decoded sketches (never re-encoded to be merged). So do the query sketches (`merge_queries`),
    whose merged rows carry only the figures."""
    pids = tuple(sorted(results))
    decoded = {p: decode_timings(results[p]) for p in pids}
    merged = merge_stats([{**results[p], "timings": {}} for p in pids], query_sketches=False)
    info = infos.get(main_pid) or infos[pids[0]]
    sketches = merge_sketches(decoded[p] for p in pids)
    span = float(merged.get("span_s") or 0.0)
    per_pid = (
        {p: {name: timing_row(sk, _span(results[p])) for name, sk in decoded[p].items()} for p in pids}
        if len(pids) > 1
        else {}
    )
    errors_by_type: dict[str, dict[str, int]] = {}
    for p in pids:
        for name in decoded[p]:
            by_type = errors_by_type.setdefault(name, {})
            for kind, n in (results[p]["timings"][name].get("errors_by_type") or {}).items():
                by_type[kind] = by_type.get(kind, 0) + n
    return AgentView(
        info=info,
        pids=pids,
        window_s=window,
        timings={name: timing_row(sk, span) for name, sk in sketches.items()},
        sketches=sketches,
        counters=merged.get("counters", {}),
        gauges=merged.get("gauges", {}),
        gc=merged.get("gc"),
        queries=merged.get("queries"),
        per_pid=per_pid,
        errors_by_type=errors_by_type,
        overflow=merged.get("overflow", {}),
        taken_at=float(merged.get("now", 0.0)),
        figures={p: worker_figures(results[p], decoded[p]) for p in pids},
        gone_pids=tuple(sorted(gone)),
        requests=request_rows(merge_requests(results[p].get("requests") for p in pids)),
        memory=(results.get(main_pid) or results[pids[0]]).get("memory"),
    )


def merge_sketches(parts: Iterable[Mapping[str, Sketch]]) -> dict[str, Sketch]:
    """The sketches of several processes merged by name (bucket counts add); a name only one process
    has keeps that process's sketch, not copied. The parts are left as they are."""
    out: dict[str, Sketch] = {}
    copied: set[str] = set()
    for part in parts:
        for name, sketch in part.items():
            into = out.get(name)
            if into is None:
                out[name] = sketch
                continue
            if name not in copied:
                into = out[name] = into.copy()
                copied.add(name)
            into.merge(sketch)
    return out


def _span(stats: Mapping[str, Any]) -> float:
    return float(stats.get("span_s") or 0.0)


class AgentWatcher:
    """Keeps connections to the agents of one PID and its children open between ticks.

    A child whose agent goes away (a worker recycled by --max-requests, reloaded by HUP, killed) keeps its
    last "since start" stats in the merged view, listed in `gone_pids`, until `reset()`; windowed views
    drop it, as its window would have emptied anyway."""

    def __init__(self, socket_dir: str | None = None, children: bool = True) -> None:
        self.socket_dir = socket_dir
        self.children = children
        self._clients: dict[int, AgentClient] = {}
        self._lock = threading.Lock()
        self._root: int | None = None
        self._kept: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        """The last since-start (stats, info) of each child agent."""
        self._gone: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        """Those of child agents that went away (their final stats where they left them)."""
        self._since = 0.0
        """When the root process started: departed workers' final stats from then on are merged (also
        those of workers recycled before this viewer attached, as a one-shot snapshot is)."""
        self._dirs: set[str] = set()
        self._finals_read: set[str] = set()

    def reset(self) -> None:
        """Forget the data of departed workers."""
        with self._lock:
            self._gone.clear()

    def _discover(self, pid: int) -> dict[int, str]:
        found: dict[int, str] = {}
        own = find_agent(pid, self.socket_dir)
        if own is not None:
            found[pid] = own
        if self.children:
            found.update(find_child_agents(pid, self.socket_dir))
        return found

    def fetch(self, pid: int, window: float | None) -> AgentView | None:
        """The merged view of `pid` and its children's agents; None where none has an agent."""
        with self._lock:
            if pid != self._root:
                self._root = pid
                self._kept.clear()
                self._gone.clear()
                self._since = _started_at(pid)
                self._dirs = {socket_dir(self.socket_dir)}
                self._finals_read = set()
            found = self._discover(pid)
            for gone in set(self._clients) - set(found):
                self._clients.pop(gone).close()
            results: dict[int, dict[str, Any]] = {}
            infos: dict[int, dict[str, Any]] = {}
            for apid, path in found.items():
                client = self._clients.get(apid)
                try:
                    if client is None:
                        client = AgentClient(path)
                        self._clients[apid] = client
                    results[apid] = client.call("stats", {"window": window})
                    infos[apid] = agent_info(client)
                except (OSError, AgentError):
                    dead = self._clients.pop(apid, None)
                    if dead is not None:
                        dead.close()
            self._keep(pid, found, results, infos, window)
            if window is None:
                for apid, (stats, info) in self._gone.items():
                    if apid not in results:
                        results[apid], infos[apid] = stats, info
            if not results:
                return None
            departed = tuple(p for p in self._gone if window is None and p not in found)
            return build_view(results, infos, window, pid, departed)

    def _keep(
        self,
        pid: int,
        found: dict[int, str],
        results: dict[int, dict[str, Any]],
        infos: dict[int, dict[str, Any]],
        window: float | None,
    ) -> None:
        """Remember each child's last since-start stats; move those whose agent went away to `_gone`."""
        if not self.children:
            return
        self._dirs.update(os.path.dirname(path) for path in found.values())
        for apid in list(self._kept):
            if apid not in found:
                self._gone[apid] = self._kept.pop(apid)
        finals = read_finals(self._dirs, {pid, *found}, self._since, self._finals_read, found)
        for apid, stats in finals.items():
            if apid != pid:
                info = self._gone.get(apid, ({}, {"pid": apid}))[1]
                self._gone[apid] = (stats, info)
        if window is None:
            for apid, stats in results.items():
                if apid != pid:
                    self._kept[apid] = (stats, infos[apid])
                    self._gone.pop(apid, None)  # a reused PID: the new process's data wins

    def client(self, pid: int) -> AgentClient | None:
        """An open client for the agent of `pid` itself (for actions)."""
        with self._lock:
            return self._clients.get(pid)

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


class AgentPool:
    """Open clients to many agents by PID, kept between calls (the exporter asks a whole host's agents
    for their stats on every collection). A client whose call failed is closed and reopened by the next
    call; `infos` keeps each agent's `agent_info` from its latest hello, also once it is gone.

    Thread-safe: calls to different agents may run at once (each client takes one request at a time)."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._clients: dict[int, AgentClient] = {}
        self._paths: dict[int, str] = {}
        self.infos: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def sync(self, found: dict[int, str]) -> dict[int, dict[str, Any]]:
        """Keep the agents of `found` ({pid: socket path}): the clients of the others, and of those whose
        socket moved, are closed. Returns the `infos` of the agents dropped (those not in `found`)."""
        with self._lock:
            dropped: dict[int, dict[str, Any]] = {}
            for pid in set(self._paths) - set(found):
                client = self._clients.pop(pid, None)
                if client is not None:
                    client.close()
                del self._paths[pid]
                dropped[pid] = self.infos.pop(pid, {})
            for pid, path in found.items():
                if self._paths.get(pid) != path:
                    client = self._clients.pop(pid, None)
                    if client is not None:
                        client.close()
                    self._paths[pid] = path
                    self.infos.pop(pid, None)
            return dropped

    def pids(self) -> list[int]:
        """The agents kept, in the order they were first found."""
        with self._lock:
            return list(self._paths)

    def call(self, pid: int, method: str, params: dict[str, Any] | None = None) -> Any:
        """One request to the agent of `pid` (kept by `sync`), over its kept client; AgentError or OSError,
        with the client closed, when it cannot answer."""
        with self._lock:
            client, path = self._clients.get(pid), self._paths[pid]
        try:
            if client is None or client.closed:
                client = AgentClient(path, timeout=self.timeout)
                info = agent_info(client)
                with self._lock:
                    self._clients[pid] = client
                    self.infos[pid] = info
            return client.call(method, params, timeout=self.timeout)
        except (AgentError, OSError):
            if client is not None:
                client.close()
            raise

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
            self._paths.clear()


def _started_at(pid: int) -> float:
    """When `pid` started (unix seconds, psutil); now where it cannot be read (it just exited)."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return time.time()


def call_agent(pid: int, method: str, params: dict[str, Any], socket_dir: str | None, timeout: float) -> Any:
    """Run one request (an action, an explain) on the agent of `pid` over a connection of its own.

    A connection of its own, so that a 5 s profile does not hold up the stats polled every tick.
    Raises AgentError with a one-line message.
    """
    path = find_agent(pid, socket_dir)
    if path is None:
        raise AgentError(f"process {pid} has no perftop agent")
    with AgentClient(path, timeout=min(timeout, 10.0)) as client:
        return client.call(method, params, timeout=timeout)


def fetch_agent_view(
    pid: int, window: float | None, socket_dir: str | None, children: bool = True
) -> AgentView | None:
    """One-shot form of `AgentWatcher.fetch` (for `perftop snapshot`)."""
    watcher = AgentWatcher(socket_dir, children)
    try:
        return watcher.fetch(pid, window)
    finally:
        watcher.close()
