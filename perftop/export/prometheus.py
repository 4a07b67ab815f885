"""`perftop export`: a Prometheus scrape endpoint for this host's agents, system and processes.

Built on prometheus_client: one custom collector yields metric families on every collection and the
library's exposition writes them, as the Prometheus text format or as OpenMetrics depending on the Accept
header. A collection samples the host (the SystemCollector is kept, so rates are measured between
collections), every process that has an agent in the socket directory or was named with `--pid` (one
ProcessCollector each, dropped when the process goes), and asks every agent for its stats since start.
By default a collection is made ahead of each scrape, timed by the scrapes so far (see Prerenderer), so
that a large host is answered in milliseconds; the `X-Perftop-Data-Age` header says how old it is.

Every timing is exported as a summary (p50/p90/p99 from the agent's sketch), as a classic histogram whose
`le` buckets are the same on every host (a log-spaced ladder, `--buckets-per-decade`), so that
`histogram_quantile(0.99, sum by (le) (rate(perftop_timing_histogram_seconds_bucket[5m])))` gives the p99
of a whole fleet, and as a native histogram (`perftop_timing_native_seconds`) for the scrapers that
negotiate a format carrying it (Prometheus' protobuf, OpenMetrics 2.0): see histograms.py for both
shapes and their error. `--max-series` caps the series of a scrape (see `HostCollector._admit`).

Pre-fork servers (gunicorn, uWSGI, multiprocessing pools): an agent whose parent also runs one is a worker
of that parent's service. A worker that exits (recycled by --max-requests, reloaded, killed) has its
per-PID series exported by one more collection (its final counts, from the stats file its agent left at
exit, with perftop_agent_up 0), then dropped; its counts stay in the `perftop_service_*` counters of its
parent, so that a recycle never makes a service's counters go backwards.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import os
import re
import selectors
import socket
import sys
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import BaseHTTPRequestHandler, HTTPServer
from itertools import accumulate, pairwise
from typing import TYPE_CHECKING, Any

from perftop.export import protobuf, text
from perftop.export.histograms import (
    DEFAULT_PER_DECADE,
    SCHEMA,
    ZERO_THRESHOLD,
    Ladder,
    ladder,
    native_buckets,
)
from perftop.render.units import safe_text
from perftop.wire import paths
from perftop.wire.sketch import ALPHA, MAX_INDEX, Sketch, bucket_value, quantiles_of

if TYPE_CHECKING:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector

    from perftop.collectors.agent_client import AgentClient
    from perftop.collectors.model import ProcessSample, SystemSample
    from perftop.collectors.process import ProcessCollector

# prometheus_client, psutil and the collectors are imported where they are used, so that registering
# this command on the CLI's parser costs nothing to the other commands.

log = logging.getLogger("perftop")

NS_PER_S = 1e9
BUCKETS_S: tuple[float, ...] = ladder().bounds
"""The `le` bounds of every timing histogram at the default resolution, in seconds (see histograms.py)."""
NATIVE_FAMILY = "perftop_timing_native_seconds"
"""The native histogram of every timing: `histogram_quantile(0.99, sum(rate(
perftop_timing_native_seconds{metric="api.checkout"}[1m])))` is the p99 of every worker, within 2%."""
OWN_GAUGES = ("perftop_export_agents", "perftop_export_dropped_series", "perftop_export_collect_seconds")
"""The exporter's own series, one each per scrape."""
QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99)
"""The quantiles of the timing summaries."""
DEFAULT_LISTEN = "127.0.0.1:9464"
DEFAULT_MAX_QUERIES = 50
AGENT_TIMEOUT_S = 5.0
"""How long one agent may take to answer a scrape's stats request."""
RETIRED_PIDS_KEPT = 4096
"""How many departed workers' PIDs the exporter remembers, against counting a late final file twice."""
PRIME_S = 0.5
"""A process's CPU share in its first scrape is measured over this long (later ones: since the last)."""
REQUEST_TIMEOUT_S = 5.0
"""How long a client may take to send its request's head, and then each write of the answer."""
MAX_HEAD_BYTES = 16384
"""A request head larger than this is refused (the connection closed)."""


class TimingDigest:
    """What one scrape exports of one timing sketch: count, sum, quantiles, cumulative bucket counts on
    the classic ladder, and the native histogram's buckets."""

    __slots__ = ("buckets", "count", "errors", "native_deltas", "native_spans", "quantiles", "sum_s", "zero")

    def __init__(
        self,
        count: int,
        errors: int,
        sum_s: float,
        quantiles: list[float],
        buckets: list[float],
        zero: int = 0,
        native: tuple[list[tuple[int, int]], list[int]] = ([], []),
    ) -> None:
        self.count = count
        self.errors = errors
        self.sum_s = sum_s
        self.quantiles = quantiles
        """Seconds, one per QUANTILES (NaN when the sketch is empty)."""
        self.buckets = buckets
        """Cumulative counts, one per bound of the ladder and a last one for +Inf (the count)."""
        self.zero = zero
        """Values the sketch counts as zero (the native zero bucket)."""
        self.native_spans, self.native_deltas = native
        """The native histogram's positive buckets (see histograms.native_buckets)."""


def digest_sketch(data: Any, lad: Ladder | None = None, native: bool = False) -> TimingDigest:
    """Summarise a serialized sketch (`Sketch.to_dict`, values in ns) in one pass over its sorted bins,
    with classic buckets on `lad` (default: the default ladder) and, if `native`, the native buckets.

    The quantiles come from `quantiles_of`, as `Sketch.quantiles` does (nearest rank ceil(q * count),
    clamped to the exact min and max). ValueError or TypeError when the sketch is malformed.
    """
    lad = lad or ladder()
    if not isinstance(data, dict) or data.get("alpha") != ALPHA:
        raise ValueError("not a sketch of this accuracy")
    count = int(data["count"])
    zero = int(data["zero"])
    bins = data["bins"]
    if not isinstance(bins, list):
        raise TypeError("bins must be a list")
    # Columns at C speed; a pair of the wrong length fails the unpacking, a non-number the arithmetic.
    idx, counts = (list(column) for column in zip(*bins, strict=True)) if bins else ([], [])
    if idx != sorted(idx):
        order = sorted(range(len(idx)), key=idx.__getitem__)
        idx = [idx[k] for k in order]
        counts = [counts[k] for k in order]
    cum = list(accumulate(counts))
    if (cum[-1] if cum else 0) + zero != count or count < 0 or zero < 0 or min(counts, default=0) < 0:
        raise ValueError("bin counts do not add up to the count")
    if len(set(idx)) != len(idx):
        raise ValueError("a bin appears twice")
    if idx and not -MAX_INDEX <= idx[0] <= idx[-1] <= MAX_INDEX:
        raise ValueError("a bin index beyond the float range")
    buckets: list[float] = []
    for threshold in lad.thresholds:
        pos = bisect_right(idx, threshold)
        buckets.append(float(zero + (cum[pos - 1] if pos else 0)))
    buckets.append(float(count))
    if count:
        values = quantiles_of(QUANTILES, count, zero, idx, counts, float(data["min"]), float(data["max"]))
        quantiles = [value / NS_PER_S for value in values]
    else:
        quantiles = [math.nan] * len(QUANTILES)
    return TimingDigest(
        count,
        int(data.get("errors") or 0),
        float(data["sum"]) / NS_PER_S,
        quantiles,
        buckets,
        zero,
        native_buckets(idx, counts) if native else ([], []),
    )


QUERY_BUCKETS: tuple[float, ...] = (0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500)
"""The `le` bounds of the queries-per-request histograms."""
_QUERY_LE = [*(f"{b:g}" for b in QUERY_BUCKETS), "+Inf"]


def count_buckets(data: Any, bounds: Sequence[float]) -> tuple[list[float], float]:
    """Cumulative counts of a sketch of small whole numbers (queries per request) at each bound and +Inf,
    and the sum. A bucket's values are within 1% of its representative, so whole numbers up to about 50
    fall in buckets of their own; each counts at the first bound its representative does not exceed."""
    sketch = Sketch.from_dict(data)
    cumulative = []
    for bound in bounds:
        n = sketch.zero + sum(c for i, c in sketch.bins.items() if bucket_value(i) <= bound + 0.5)
        cumulative.append(float(n))
    cumulative.append(float(sketch.count))
    return cumulative, float(sketch.sum)


_Pending = tuple[int, int, Callable[[], None]]
"""A timing or route waiting for the series budget: (its count, its series, what emits them)."""


class _Agent:
    """One agent the exporter talks to: its socket, an open client kept between scrapes, its name."""

    def __init__(self, pid: int, path: str) -> None:
        self.pid = pid
        self.path = path
        self.client: AgentClient | None = None
        self.info: dict[str, Any] = {}

    def stats(self) -> dict[str, Any]:
        """The agent's stats since start; AgentError (and the client closed) if it cannot answer."""
        from perftop.collectors.agent_client import AgentClient, AgentError

        if self.client is None or self.client.closed:
            self.client = AgentClient(self.path, timeout=AGENT_TIMEOUT_S)
            h = self.client.hello
            self.info = {
                "name": h.name or "",
                "agent_version": h.agent_version,
                "python": h.python,
                "protocol": str(h.protocol),
            }
        result = self.client.call("stats", {"window": None}, timeout=AGENT_TIMEOUT_S)
        if not isinstance(result, dict):
            raise AgentError("the agent answered stats with something other than an object")
        return result

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


def _ppid(pid: int) -> int:
    """The parent PID of `pid`, from /proc (OSError once it has exited)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


class _Departed:
    """An agent gone since the previous collection: the last stats it answered, or the final ones it left."""

    def __init__(self, agent: _Agent, stats: dict[str, Any], ppid: int) -> None:
        self.agent = agent
        self.stats = stats
        self.ppid = ppid


class _ServiceCounts:
    """Counts summed over processes of a service: calls, errors and seconds of each timing, each counter's
    value, and how many of its workers have exited."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.counters: dict[str, float] = {}
        self.departed = 0

    def add(self, stats: dict[str, Any], departed: bool = False) -> None:
        """Add one process's since-start `stats` (malformed entries are skipped)."""
        self.departed += departed
        for metric, timing in (stats.get("timings") or {}).items():
            sketch = timing.get("sketch") if isinstance(timing, dict) else None
            if not isinstance(sketch, dict):
                continue
            with contextlib.suppress(TypeError, ValueError, KeyError):
                count, errors = int(sketch["count"]), int(sketch.get("errors") or 0)
                seconds = float(sketch["sum"]) / NS_PER_S
                self.calls[metric] = self.calls.get(metric, 0) + count
                self.errors[metric] = self.errors.get(metric, 0) + errors
                self.seconds[metric] = self.seconds.get(metric, 0.0) + seconds
        for metric, counter in (stats.get("counters") or {}).items():
            value = counter.get("value") if isinstance(counter, dict) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.counters[metric] = self.counters.get(metric, 0.0) + float(value)

    def merge(self, other: _ServiceCounts) -> None:
        for metric, n in other.calls.items():
            self.calls[metric] = self.calls.get(metric, 0) + n
        for metric, n in other.errors.items():
            self.errors[metric] = self.errors.get(metric, 0) + n
        for metric, x in other.seconds.items():
            self.seconds[metric] = self.seconds.get(metric, 0.0) + x
        for metric, x in other.counters.items():
            self.counters[metric] = self.counters.get(metric, 0.0) + x
        self.departed += other.departed


class _Families:
    """The metric families of one scrape, created on first use so empty ones are not exposed."""

    def __init__(self) -> None:
        self._by_name: dict[str, Metric] = {}

    def gauge(self, name: str, doc: str, labels: Sequence[str], unit: str = "") -> GaugeMetricFamily:
        from prometheus_client.core import GaugeMetricFamily

        fam = self._by_name.get(name)
        if fam is None:
            fam = self._by_name[name] = GaugeMetricFamily(name, doc, labels=labels, unit=unit)
        assert isinstance(fam, GaugeMetricFamily)
        return fam

    def counter(self, name: str, doc: str, labels: Sequence[str], unit: str = "") -> CounterMetricFamily:
        from prometheus_client.core import CounterMetricFamily

        fam = self._by_name.get(name)
        if fam is None:
            fam = self._by_name[name] = CounterMetricFamily(name, doc, labels=labels, unit=unit)
        assert isinstance(fam, CounterMetricFamily)
        return fam

    def add(self, fam: Metric) -> Metric:
        return self._by_name.setdefault(fam.name, fam)

    def family(self, name: str, make: Callable[[], Any]) -> Any:
        """The family `name`, made by `make` on first use."""
        fam = self._by_name.get(name)
        if fam is None:
            fam = self._by_name[name] = make()
        return fam

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._by_name.values())


def _label(value: object) -> str:
    """A label value from the app (names, fingerprints, versions) with its control characters shown as
    escapes: the exposition format would carry an ESC raw, to whoever curls /metrics to a terminal."""
    return safe_text(value, newlines=False)


def _limit_value(value: int | float | None) -> float:
    """A limit for Prometheus: unlimited (None) is +Inf, so `used / limit` reads 0."""
    return math.inf if value is None else float(value)


class HostCollector:
    """The prometheus_client collector of `perftop export`: everything perftop sees on this host.

    Thread-safe: concurrent scrapes are served one after the other (the system and process collectors
    measure rates between calls and must not be sampled twice at once).
    """

    def __init__(
        self,
        socket_dir: str | None = None,
        pids: Iterable[int] = (),
        max_queries: int = DEFAULT_MAX_QUERIES,
        buckets_per_decade: int = DEFAULT_PER_DECADE,
        max_series: int = 0,
    ) -> None:
        """`buckets_per_decade`: the classic histograms' resolution; `max_series`: the series budget of
        a scrape (0: none), see `_admit`."""
        self.socket_dir = paths.socket_dir(socket_dir)
        self.explicit_socket_dir = socket_dir
        self.pids = tuple(dict.fromkeys(pids))
        self.max_queries = max_queries
        self.ladder = ladder(buckets_per_decade)
        self.max_series = max_series
        self._lock = threading.Lock()
        from perftop.collectors.system import SystemCollector

        self._system = SystemCollector()
        self._processes: dict[int, ProcessCollector] = {}
        self._gone: set[int] = set()
        """--pid processes that exited: not looked at again (their PID may be reused)."""
        self._agents: dict[int, _Agent] = {}
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="perftop-export")
        self.last_duration_s = 0.0
        self.extra_families: list[Callable[[], Iterable[Metric]]] = []
        """More families for every collection: the OTLP pusher's own counters."""
        self._unsampled: dict[int, float] = {}
        """PIDs whose collector has not been sampled yet: when it took its CPU baseline (monotonic)."""
        self._started_at = time.time()
        self._ppids: dict[int, int] = {}
        """The parent PID of each agent found (read once, when it is first found)."""
        self._last: dict[int, dict[str, Any]] = {}
        """The latest stats of each agent that answered."""
        self._lingering: dict[int, _Departed] = {}
        """Agents gone since the previous collection: exported once more (their final counts), then folded
        into their service's `_retired` counts."""
        self._retired: dict[int, _ServiceCounts] = {}
        """By service (parent PID): the counts of its workers that have exited."""
        self._finals_read: set[str] = set()
        self._retired_pids: dict[int, None] = {}
        """The latest workers folded into `_retired` (a final file read after that is not counted twice)."""
        self._open_processes(self._discover())  # baselines from now: the first scrape is primed already

    def close(self) -> None:
        with self._lock:
            for agent in self._agents.values():
                agent.close()
            self._agents.clear()
        self._pool.shutdown(wait=False)

    def describe(self) -> Iterable[Metric]:
        """Nothing: the families depend on what each scrape finds (registered with auto_describe off)."""
        return []

    # -- discovery -------------------------------------------------------------------------------------

    def _discover(self) -> dict[int, str]:
        """{pid: socket path} of every live agent in the socket dir, and of the --pid processes' agents."""
        found: dict[int, str] = {}
        try:
            names = os.listdir(self.socket_dir)
        except OSError:
            names = []
        for name in names:
            pid = paths.pid_of_socket_name(name)
            if pid is not None and pid != os.getpid() and paths.pid_alive(pid):
                found[pid] = os.path.join(self.socket_dir, name)
        from perftop.collectors.discovery import find_agent

        for pid in self.pids:
            if pid not in found and pid not in self._gone:
                path = find_agent(pid, self.explicit_socket_dir)
                if path is not None:
                    found[pid] = path
        return found

    def _sync_agents(self, found: dict[int, str]) -> None:
        """Open clients for new agents; the workers whose agent went away linger for one more collection."""
        for pid in self._lingering:
            self._retire(pid)
        self._lingering.clear()
        for pid in set(self._agents) - set(found):
            gone = self._agents.pop(pid)
            gone.close()
            last = self._last.pop(pid, None)
            ppid = self._ppids.pop(pid, None)
            if last is not None and ppid in found:  # a worker of a parent with an agent (a service)
                self._lingering[pid] = _Departed(gone, last, ppid)
        for pid in found:
            if pid not in self._ppids:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    self._ppids[pid] = _ppid(pid)
        self._read_finals(found)
        for pid, path in found.items():
            agent = self._agents.get(pid)
            if agent is None or agent.path != path:
                if agent is not None:
                    agent.close()
                self._agents[pid] = _Agent(pid, path)

    def _services(self, found: Iterable[int]) -> set[int]:
        """The parents of workers: agents (found now) whose PID is the parent PID of another agent."""
        live = set(found)
        parents = {ppid for pid, ppid in self._ppids.items() if pid in live and pid != ppid}
        parents |= {d.ppid for d in self._lingering.values()} | set(self._retired)
        return parents & live

    def _read_finals(self, found: dict[int, str]) -> None:
        """The final stats left by workers of the services that exited since the exporter started: those
        of the workers that lingered replace their last stats, those of workers never seen (that came and
        went between two collections) linger too."""
        from perftop.collectors.workers import read_finals

        parents = self._services(found) | {d.ppid for d in self._lingering.values()}
        if not parents:
            return
        dirs = [self.socket_dir, *(os.path.dirname(a.path) for a in self._agents.values())]
        parent_of: dict[int, int] = {}
        finals = read_finals(dirs, parents, self._started_at, self._finals_read, found, parent_of)
        for pid, stats in finals.items():
            departed = self._lingering.get(pid)
            if departed is not None:
                departed.stats = stats
            elif pid not in found and pid not in self._retired_pids:  # not counted already
                self._lingering[pid] = _Departed(_Agent(pid, ""), stats, parent_of[pid])

    def _retire(self, pid: int) -> None:
        """Fold a departed worker's final counts into its service's."""
        departed = self._lingering[pid]
        self._retired.setdefault(departed.ppid, _ServiceCounts()).add(departed.stats, departed=True)
        self._retired_pids[pid] = None
        while len(self._retired_pids) > RETIRED_PIDS_KEPT:
            del self._retired_pids[next(iter(self._retired_pids))]

    def _fetch(self, agent: _Agent) -> dict[str, Any] | None:
        from perftop.collectors.agent_client import AgentError

        try:
            return agent.stats()
        except (AgentError, OSError) as exc:
            log.debug("agent %s did not answer: %s", agent.pid, exc)
            agent.close()
            return None

    def _open_processes(self, agent_pids: Iterable[int]) -> list[int]:
        """The PIDs to sample: a collector for each (a new one takes its CPU baseline now); the
        collectors of PIDs no longer wanted are dropped."""
        from perftop.collectors.errors import CollectorError
        from perftop.collectors.process import ProcessCollector

        wanted = [p for p in dict.fromkeys([*self.pids, *agent_pids]) if p not in self._gone]
        for pid in set(self._processes) - set(wanted):
            del self._processes[pid]
            self._unsampled.pop(pid, None)
        for pid in wanted:
            if pid not in self._processes:
                try:
                    self._processes[pid] = ProcessCollector(pid)
                except CollectorError:
                    if pid in self.pids:
                        self._gone.add(pid)
                    continue
                self._unsampled[pid] = time.monotonic()
        return wanted

    def _sample_processes(self, agent_pids: Iterable[int]) -> dict[int, ProcessSample]:
        from perftop.collectors.errors import CollectorError

        wanted = self._open_processes(agent_pids)
        baselines = [self._unsampled[pid] for pid in wanted if pid in self._unsampled]
        if baselines:
            # A process never sampled has only the CPU baseline its collector took when it was opened
            # (at start-up, or just now for one that appeared since): let PRIME_S pass since then, so
            # that its first CPU share is measured as well as the later ones (not 0.0 over no time).
            time.sleep(max(0.0, max(baselines) + PRIME_S - time.monotonic()))
        out: dict[int, ProcessSample] = {}
        for pid in wanted:
            collector = self._processes.get(pid)
            if collector is None:
                continue
            try:
                out[pid] = collector.sample()
            except CollectorError:
                self._processes.pop(pid, None)
                if pid in self.pids:
                    self._gone.add(pid)
            self._unsampled.pop(pid, None)
        return out

    # -- one scrape ------------------------------------------------------------------------------------

    def collect(self, agent_stats: dict[int, dict[str, Any]] | None = None) -> Iterable[Metric]:
        """One collection's families; `agent_stats`, if given, gets each answering agent's stats by PID
        (the raw sketches, for the OTLP push)."""
        with self._lock:
            started = time.perf_counter()
            found = self._discover()
            self._sync_agents(found)
            agents = list(self._agents.values())
            futures = [self._pool.submit(self._fetch, agent) for agent in agents]
            system = self._system.sample()
            processes = self._sample_processes(found)
            fams = _Families()
            self._system_families(fams, system)
            apps: dict[int, str] = {}
            pending: list[_Pending] = []
            for agent, future in zip(agents, futures, strict=True):
                stats = future.result()
                app = _label(
                    agent.info.get("name") or (processes[agent.pid].name if agent.pid in processes else "")
                )
                apps[agent.pid] = app
                labels = [app, str(agent.pid)]
                if stats is not None:
                    self._last[agent.pid] = stats
                fams.gauge(
                    "perftop_agent_up", "1 if the agent answered this scrape, 0 if not", ["app", "pid"]
                ).add_metric(labels, 0.0 if stats is None else 1.0)
                if stats is not None:
                    self._agent_families(fams, labels, agent, stats, pending)
                    if agent_stats is not None:
                        agent_stats[agent.pid] = stats
            for pid, departed in sorted(self._lingering.items()):
                app = _label(departed.agent.info.get("name") or "")
                apps.setdefault(pid, app)
                labels = [app, str(pid)]
                fams.gauge(
                    "perftop_agent_up", "1 if the agent answered this scrape, 0 if not", ["app", "pid"]
                ).add_metric(labels, 0.0)
                self._agent_families(fams, labels, departed.agent, departed.stats, pending)
            self._service_families(fams, found, apps)
            for pid, sample in processes.items():
                self._process_families(fams, apps.get(pid) or sample.name, sample)
            dropped = self._admit(fams, pending)
            fams.gauge("perftop_export_agents", "Agents found by this scrape", []).add_metric(
                [], float(len(agents))
            )
            fams.gauge(
                "perftop_export_dropped_series",
                "Series left out of this scrape by --max-series (whole timings and routes, least busy first)",
                [],
            ).add_metric([], float(dropped))
            for extra in self.extra_families:
                for fam in extra():
                    fams.add(fam)
            self.last_duration_s = time.perf_counter() - started
            fams.gauge(
                "perftop_export_collect_seconds",
                "Time this scrape took to collect (before rendering)",
                [],
                unit="seconds",
            ).add_metric([], self.last_duration_s)
            return list(fams)

    def _service_families(self, fams: _Families, found: Iterable[int], apps: dict[int, str]) -> None:
        """Per service (a parent whose workers run agents): its processes' counts summed, those of its
        workers that exited included, so that they never go backwards when workers come and go."""
        roots = self._services(found)
        for gone in set(self._retired) - roots:  # the parent itself exited: its service ends
            del self._retired[gone]
        for root in sorted(roots):
            counts = _ServiceCounts()
            live = [pid for pid in self._last if pid == root or self._ppids.get(pid) == root]
            for pid in live:
                counts.add(self._last[pid])
            for departed in self._lingering.values():
                if departed.ppid == root:
                    counts.add(departed.stats, departed=True)
            if root in self._retired:
                counts.merge(self._retired[root])
            labels = [apps.get(root, ""), str(root)]
            names = ["app", "pid"]
            fams.gauge(
                "perftop_service_workers", "Workers of a parent with an agent, live", names
            ).add_metric(labels, float(len([p for p in live if p != root])))
            fams.counter(
                "perftop_service_workers_departed", "Workers of a parent that exited while exported", names
            ).add_metric(labels, float(counts.departed))
            mnames = [*names, "metric"]
            calls = fams.counter(
                "perftop_service_timing_calls", "Timed calls in all of a parent's processes, past too", mnames
            )
            errors = fams.counter("perftop_service_timing_errors", "Timed calls that raised, idem", mnames)
            seconds = fams.counter(
                "perftop_service_timing_seconds", "Time in timed calls, idem", mnames, unit="seconds"
            )
            for metric in sorted(counts.calls):
                key = [*labels, _label(metric)]
                calls.add_metric(key, float(counts.calls[metric]))
                errors.add_metric(key, float(counts.errors.get(metric, 0)))
                seconds.add_metric(key, counts.seconds.get(metric, 0.0))
            if counts.counters:
                fam = fams.counter("perftop_service_counter", "Counters (perftop.count), idem", mnames)
                for metric, value in sorted(counts.counters.items()):
                    fam.add_metric([*labels, _label(metric)], value)

    @staticmethod
    def _system_families(fams: _Families, s: SystemSample) -> None:
        def g(name: str, doc: str, value: float, unit: str = "") -> None:
            fams.gauge(f"perftop_system_{name}", doc, [], unit).add_metric([], value)

        g("cpu_percent", "Host CPU busy share since the previous scrape", s.cpu_percent)
        core = fams.gauge("perftop_system_cpu_core_percent", "Busy share of each CPU", ["cpu"])
        for i, value in enumerate(s.per_cpu_percent):
            core.add_metric([str(i)], value)
        load = fams.gauge("perftop_system_load_average", "Load average", ["period"])
        for period, value in zip(("1m", "5m", "15m"), s.load_avg, strict=True):
            load.add_metric([period], value)
        g("memory_total_bytes", "Host memory", s.memory.total_bytes, "bytes")
        g("memory_used_bytes", "Host memory in use", s.memory.used_bytes, "bytes")
        g("memory_available_bytes", "Host memory available", s.memory.available_bytes, "bytes")
        g("swap_total_bytes", "Host swap", s.swap.total_bytes, "bytes")
        g("swap_used_bytes", "Host swap in use", s.swap.used_bytes, "bytes")
        g(
            "disk_read_bytes_per_second",
            "Disk read rate since the previous scrape",
            s.disk_io.read_bytes_per_s,
        )
        g("disk_write_bytes_per_second", "Disk write rate", s.disk_io.write_bytes_per_s)
        g("disk_read_ops_per_second", "Disk read operations per second", s.disk_io.read_ops_per_s)
        g("disk_write_ops_per_second", "Disk write operations per second", s.disk_io.write_ops_per_s)
        g("network_sent_bytes_per_second", "Network send rate", s.net_io.sent_bytes_per_s)
        g("network_received_bytes_per_second", "Network receive rate", s.net_io.recv_bytes_per_s)
        if s.pressure:
            psi = fams.gauge(
                "perftop_system_pressure_percent",
                "Linux PSI: share of time tasks stalled on a resource",
                ["resource", "kind", "window"],
            )
            for resource, p in s.pressure.items():
                rows: list[tuple[str, str, float | None]] = [
                    ("some", "10s", p.some_avg10),
                    ("some", "60s", p.some_avg60),
                    ("some", "300s", p.some_avg300),
                    ("full", "10s", p.full_avg10),
                    ("full", "60s", p.full_avg60),
                    ("full", "300s", p.full_avg300),
                ]
                for kind, window, avg in rows:
                    if avg is not None:
                        psi.add_metric([resource, kind, window], avg)

    @staticmethod
    def _process_families(fams: _Families, app: str, p: ProcessSample) -> None:
        labels = [_label(app), str(p.pid), _label(p.name)]
        names = ["app", "pid", "name"]

        def g(name: str, doc: str, value: float | None, unit: str = "") -> None:
            if value is not None:
                fams.gauge(f"perftop_process_{name}", doc, names, unit).add_metric(labels, float(value))

        g("cpu_percent", "Process CPU use since the previous scrape (100 = one core)", p.cpu_percent)
        g("resident_memory_bytes", "Resident set size", p.rss_bytes, "bytes")
        g("virtual_memory_bytes", "Virtual memory size", p.vms_bytes, "bytes")
        g("threads", "Threads", p.num_threads)
        g("open_fds", "Open file descriptors", p.num_fds)
        g("connections", "Network connections (sampled every few seconds)", p.num_connections)
        g("start_time_seconds", "Start time, unix seconds", p.create_time, "seconds")
        if p.listen_backlog:
            blabels = [*names, "address"]
            queued = fams.gauge(
                "perftop_process_listen_backlog",
                "Connections waiting in a listening socket's accept queue (not yet taken by the app)",
                blabels,
            )
            most = fams.gauge(
                "perftop_process_listen_backlog_max", "A listening socket's listen() backlog", blabels
            )
            for b in p.listen_backlog:
                queued.add_metric([*labels, _label(b.address)], float(b.queued))
                if b.max is not None:
                    most.add_metric([*labels, _label(b.address)], float(b.max))
        soft = fams.gauge("perftop_process_limit_soft", "Soft rlimit (+Inf: unlimited)", [*names, "limit"])
        hard = fams.gauge("perftop_process_limit_hard", "Hard rlimit (+Inf: unlimited)", [*names, "limit"])
        used = fams.gauge(
            "perftop_process_limit_used", "Usage the kernel checks the rlimit against", [*names, "limit"]
        )
        for lim in p.limits:
            soft.add_metric([*labels, lim.name], _limit_value(lim.soft))
            hard.add_metric([*labels, lim.name], _limit_value(lim.hard))
            if lim.used is not None:
                used.add_metric([*labels, lim.name], float(lim.used))
        cg = p.cgroup
        if cg is not None:
            g(
                "cgroup_memory_limit_bytes",
                "cgroup memory limit (+Inf: none)",
                _limit_value(cg.memory_limit_bytes),
            )
            g("cgroup_memory_used_bytes", "cgroup memory in use", cg.memory_used_bytes, "bytes")
            g("cgroup_pids_limit", "cgroup task limit (+Inf: none)", _limit_value(cg.pids_limit))
            g("cgroup_pids_current", "cgroup tasks", cg.pids_current)
            g(
                "cgroup_cpu_limit_cores",
                "cgroup CPU quota in cores (+Inf: none)",
                _limit_value(cg.cpu_limit_cores),
            )
            for name, doc, value in (
                ("cgroup_cpu_throttled", "Periods the cgroup was throttled", cg.cpu_throttled_count),
                ("cgroup_cpu_throttled_seconds", "Time the cgroup was throttled", cg.cpu_throttled_s),
                ("cgroup_oom_kills", "OOM kills in the cgroup", cg.oom_kills),
            ):
                if value is not None:
                    fams.counter(f"perftop_process_{name}", doc, names).add_metric(labels, float(value))

    def _agent_families(
        self,
        fams: _Families,
        labels: list[str],
        agent: _Agent,
        stats: dict[str, Any],
        pending: list[_Pending],
    ) -> None:
        """The families of one agent's stats; its timings and routes go to `pending`, for the budget."""
        from prometheus_client.core import InfoMetricFamily

        base = ["app", "pid"]
        info = fams.add(InfoMetricFamily("perftop_agent", "The perftop agent in a process", labels=base))
        assert isinstance(info, InfoMetricFamily)
        info.add_metric(
            labels,
            {k: _label(agent.info.get(k, "")) for k in ("agent_version", "python", "protocol")},
        )
        mlabels = [*base, "metric"]
        app, pid = labels
        for metric, timing in (stats.get("timings") or {}).items():
            sketch = timing.get("sketch") if isinstance(timing, dict) else None
            if not isinstance(sketch, dict) or not isinstance(sketch.get("count"), int):
                continue
            # Digested only if admitted: a tight --max-series also saves the work of what it leaves out.
            key = [app, pid, _label(metric)]
            emit = partial(self._timing_series, fams, key, sketch)
            pending.append((sketch["count"], self.ladder.series + 7, emit))
        counters = stats.get("counters") or {}
        if counters:
            fam = fams.counter("perftop_counter", "Counters (perftop.count)", mlabels)
            for metric, counter in counters.items():
                total = counter.get("value") if isinstance(counter, dict) else None
                if isinstance(total, (int, float)):
                    fam.add_metric([app, pid, _label(metric)], float(total))
        gauges = stats.get("gauges") or {}
        if gauges:
            gfam = fams.gauge("perftop_gauge", "Gauges (perftop.gauge)", mlabels)
            for metric, value in gauges.items():
                if isinstance(value, (int, float)):
                    gfam.add_metric([app, pid, _label(metric)], float(value))
        gc = stats.get("gc")
        if isinstance(gc, dict):
            glabels = [*base, "generation"]
            for gc_key, name, doc in (
                ("collections", "perftop_gc_collections", "Garbage collections by generation"),
                ("collected", "perftop_gc_collected_objects", "Objects freed by the GC by generation"),
            ):
                fam = fams.counter(name, doc, glabels)
                for gen, n in enumerate(gc.get(gc_key) or []):
                    fam.add_metric([app, pid, str(gen)], float(n))
            fams.counter(
                "perftop_gc_uncollectable_objects", "Objects the GC found uncollectable", base
            ).add_metric(labels, float(gc.get("uncollectable") or 0))
        overflow = stats.get("overflow") or {}
        if overflow:
            ofam = fams.gauge(
                "perftop_agent_overflow",
                "What the agent had to drop or refuse (it counts, never hides)",
                [*base, "kind"],
            )
            for kind, value in overflow.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    ofam.add_metric([app, pid, _label(kind)], float(value))
        self._query_families(fams, labels, stats.get("queries"))
        self._request_families(fams, labels, stats.get("requests"), pending)

    def _timing_series(self, fams: _Families, key: list[str], sketch: dict[str, Any]) -> None:
        """One timing's series: summary, classic histogram, native histogram, errors (none if its
        sketch is malformed)."""
        from prometheus_client.core import HistogramMetricFamily, SummaryMetricFamily
        from prometheus_client.samples import BucketSpan, NativeHistogram, Sample

        try:
            d = digest_sketch(sketch, self.ladder, native=True)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError):
            return

        mlabels = ["app", "pid", "metric"]
        summary = fams.family(
            "perftop_timing_seconds",
            lambda: SummaryMetricFamily(
                "perftop_timing_seconds", "Timings: quantiles from the agent's sketch", labels=mlabels
            ),
        )
        histogram = fams.family(
            "perftop_timing_histogram_seconds",
            lambda: HistogramMetricFamily(
                "perftop_timing_histogram_seconds",
                "Timings in log-spaced buckets (the same on every host), for histogram_quantile() "
                "across processes and hosts",
                labels=mlabels,
            ),
        )
        native = fams.family(
            NATIVE_FAMILY,
            lambda: HistogramMetricFamily(
                NATIVE_FAMILY,
                "Timings as native histograms (protobuf or OpenMetrics 2.0 scrapes only), "
                "for histogram_quantile() across processes and hosts within 2%",
                labels=mlabels,
            ),
        )
        app, pid, metric = key
        for q, value in zip(QUANTILES, d.quantiles, strict=True):
            summary.samples.append(
                Sample(
                    "perftop_timing_seconds",
                    {"app": app, "pid": pid, "metric": metric, "quantile": str(q)},
                    value,
                )
            )
        summary.add_metric(key, d.count, d.sum_s)
        # As HistogramMetricFamily.add_metric makes them (same samples, same order), at half its cost.
        base = {"app": app, "pid": pid, "metric": metric}
        bucket = "perftop_timing_histogram_seconds_bucket"
        histogram.samples.extend(
            [
                Sample(bucket, {**base, "le": le}, n)
                for le, n in zip(self.ladder.labels, d.buckets, strict=True)
            ]
        )
        histogram.samples.append(Sample("perftop_timing_histogram_seconds_count", base, d.buckets[-1]))
        histogram.samples.append(Sample("perftop_timing_histogram_seconds_sum", dict(base), d.sum_s))
        native.samples.append(
            Sample(
                NATIVE_FAMILY,
                {"app": app, "pid": pid, "metric": metric},
                float(d.count),
                native_histogram=NativeHistogram(
                    d.count,  # whole numbers: prometheus_client's OpenMetrics parser reads them as int
                    d.sum_s,
                    SCHEMA,
                    ZERO_THRESHOLD,
                    d.zero,
                    pos_spans=[BucketSpan(offset, length) for offset, length in d.native_spans],
                    pos_deltas=d.native_deltas,
                ),
            )
        )
        fams.counter("perftop_timing_errors", "Timed calls that raised", mlabels).add_metric(
            key, float(d.errors)
        )

    def _request_families(
        self, fams: _Families, labels: list[str], requests: Any, pending: list[_Pending]
    ) -> None:
        """Per route: SQL time per request and queries per request, as histograms (merge them across
        workers and hosts with sum by (le, route)); to `pending`, for the budget."""
        if not isinstance(requests, dict) or not requests:
            return
        for route, data in requests.items():
            if not isinstance(data, dict):
                continue
            try:
                d = digest_sketch(data.get("sql_ns"), self.ladder)
                counts, total = count_buckets(data.get("queries"), QUERY_BUCKETS)
            except (ValueError, TypeError, KeyError, IndexError, OverflowError):
                continue
            key = [*labels, _label(route)]
            cost = self.ladder.series + len(QUERY_BUCKETS) + 3  # + its +Inf, _sum and _count
            pending.append((d.count, cost, partial(self._route_series, fams, key, d, counts, total)))

    def _route_series(
        self, fams: _Families, key: list[str], d: TimingDigest, counts: list[float], total: float
    ) -> None:
        from prometheus_client.core import HistogramMetricFamily

        rlabels = ["app", "pid", "route"]
        sql = fams.family(
            "perftop_request_sql_seconds",
            lambda: HistogramMetricFamily(
                "perftop_request_sql_seconds", "SQL time per web request, by route", labels=rlabels
            ),
        )
        queries = fams.family(
            "perftop_request_queries",
            lambda: HistogramMetricFamily(
                "perftop_request_queries", "SQL queries per web request, by route", labels=rlabels
            ),
        )
        sql.add_metric(key, list(zip(self.ladder.labels, d.buckets, strict=True)), d.sum_s)
        queries.add_metric(key, list(zip(_QUERY_LE, counts, strict=True)), total)

    def _admit(self, fams: _Families, pending: list[_Pending]) -> int:
        """Emit the pending timings and routes within the --max-series budget, the busiest first, and
        return how many series were left out. The other families are always exported and count first
        (with the exporter's own gauges)."""
        if not self.max_series:
            for _, _, emit in pending:
                emit()
            return 0
        room = self.max_series - sum(len(fam.samples) for fam in fams) - len(OWN_GAUGES)
        admitted = [False] * len(pending)
        for k in sorted(range(len(pending)), key=lambda k: -pending[k][0]):
            cost = pending[k][1]
            if cost <= room:
                admitted[k] = True
                room -= cost
        dropped = 0
        for (_, cost, emit), ok in zip(pending, admitted, strict=True):
            if ok:
                emit()
            else:
                dropped += cost
        return dropped

    def _query_families(self, fams: _Families, labels: list[str], queries: Any) -> None:
        if not isinstance(queries, dict):
            return
        rows = [r for r in queries.get("queries") or [] if isinstance(r, dict)]
        rows.sort(key=lambda r: r.get("total_ms") or 0.0, reverse=True)
        qlabels = ["app", "pid", "fingerprint"]
        doc = f"top {self.max_queries} by total time"
        calls = fams.counter("perftop_query_calls", f"SQL executions per fingerprint ({doc})", qlabels)
        seconds = fams.counter(
            "perftop_query_seconds", f"Total SQL time per fingerprint ({doc})", qlabels, unit="seconds"
        )
        errs = fams.counter("perftop_query_errors", f"Failed SQL executions per fingerprint ({doc})", qlabels)
        rows_fam = fams.counter("perftop_query_rows", f"Rows returned per fingerprint ({doc})", qlabels)
        for row in rows[: self.max_queries]:
            key = [*labels, _label(row.get("fingerprint"))]
            calls.add_metric(key, float(row.get("count") or 0))
            seconds.add_metric(key, float(row.get("total_ms") or 0.0) / 1000.0)
            errs.add_metric(key, float(row.get("errors") or 0))
            rows_fam.add_metric(key, float(row.get("rows") or 0))
        if len(rows) > self.max_queries:
            fams.gauge(
                "perftop_query_fingerprints_not_exported",
                "Fingerprints left out by --max-queries",
                ["app", "pid"],
            ).add_metric(labels, float(len(rows) - self.max_queries))


class _Frozen:
    """The families of one past collection, for rendering them again in another format."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


class Rendering:
    """One scrape's answer: the body, its content type, and how it was made."""

    __slots__ = ("age_s", "ahead", "body", "content_type")

    def __init__(self, body: bytes, content_type: str, age_s: float, ahead: bool) -> None:
        self.body = body
        self.content_type = content_type
        self.age_s = age_s
        """Seconds since its collection began."""
        self.ahead = ahead
        """Rendered in the background before the scrape asked, rather than for it."""


class Prerenderer:
    """Answers scrapes from a collection rendered ahead of them in a background thread, so that a
    scrape is answered at once whatever the size of the host (prometheus_client writes about 10 µs a
    line: 20 agents x 100 timings take a second to collect and write).

    - `every_s` > 0 (`--refresh S`): a collection every S seconds; scrapes get the latest one.
    - `every_s` == 0 (the default): paced by the scrapes. After each scrape the next collection is timed
      to end just before the next scrape is due (the median of the last gaps between scrapes, less
      the last collection's duration and a margin), so nothing is collected when nobody scrapes. A scrape
      is answered from a collection made since the previous scrape was answered and at most `max_age`
      old; else (the first scrape, an irregular scraper) from one begun within the last second, or one
      collected for it.
    - `always_fresh` (`--refresh 0`), or a scrape with `Cache-Control: no-cache`: from a collection begun
      after the scrape arrived. Such collections are shared by the scrapes waiting for them and start at
      least ON_REQUEST_GAP_S apart, so no client can make the exporter hammer the agents.

    Only the formats scrapers asked for are rendered ahead (the first scrape of a format renders it).
    """

    MARGIN_S = 0.5
    JITTER = 0.05
    """A paced collection should end MARGIN_S plus JITTER of the gap before the next scrape is due."""
    ON_REQUEST_GAP_S = 1.0
    """Collections made for a request (`Cache-Control: no-cache`, a first or irregular scrape, `--refresh
    0`) start at least this long apart, and requests arriving together share one: whatever clients send,
    every agent is asked for its stats at most about once a second, plus the collections made ahead."""
    MIN_PACED_GAP_S = 0.5
    """Collections made ahead of scrapes start at least this long after the previous collection."""

    def __init__(self, collector: HostCollector, every_s: float = 0.0, always_fresh: bool = False) -> None:
        """`always_fresh` (`--refresh 0`): every scrape is answered as one with `Cache-Control: no-cache`."""
        self.collector = collector
        self.every_s = every_s
        self.always_fresh = always_fresh
        self._forcing = False
        """A collection for requests is under way."""
        self._forced_at = -math.inf
        """When the latest collection for requests began (monotonic)."""
        self._cond = threading.Condition()
        self._families: list[Metric] | None = None
        self._bodies: dict[str, bytes] = {}
        self._encoders: dict[str, Callable[[Collector], bytes]] = {}
        self._started_at = 0.0
        """When the latest collection began (monotonic)."""
        self._generation = 0
        """Counts collections; a paced scrape wants one newer than what the previous scrape got."""
        self._served = 0
        self._took_s = 0.0
        self._scrapes: deque[float] = deque(maxlen=6)
        self._due: float | None = None
        self._running = 0
        """Collections under way."""
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="perftop-export-prerender", daemon=True)

    def start(self) -> None:
        if self.every_s > 0:
            self._due = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout=30)

    @property
    def max_age_s(self) -> float:
        """The oldest collection a scrape may be answered from."""
        if self.every_s > 0:
            return math.inf
        gap = self._typical_gap()
        jitter = self.JITTER * gap if gap is not None else 0.0
        return 2 * (self._took_s + jitter) + self.MARGIN_S + 1.0

    def _typical_gap(self) -> float | None:
        """The median gap between the last scrapes' arrivals, None before two (lock held): the median, so
        that one stray scrape (a curl by hand) does not upset the rhythm."""
        gaps = sorted(b - a for a, b in pairwise(self._scrapes))
        return gaps[len(gaps) // 2] if gaps else None

    def _collect(self, encoders: dict[str, Callable[[Collector], bytes]]) -> None:
        """Collect now and render every format in `encoders`; the result becomes the latest."""
        started = time.monotonic()
        with self._cond:
            self._running += 1
        try:
            families = list(self.collector.collect())
            bodies = {ctype: encode(_Frozen(families)) for ctype, encode in encoders.items()}
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()
        with self._cond:
            if started >= self._started_at:
                self._families, self._bodies, self._started_at = families, bodies, started
                self._generation += 1
                self._took_s = time.monotonic() - started
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (self._due is None or time.monotonic() < self._due):
                    self._cond.wait(None if self._due is None else max(0.0, self._due - time.monotonic()))
                if self._stopping:
                    return
                self._due = time.monotonic() + self.every_s if self.every_s > 0 else None
                encoders = dict(self._encoders)
            try:
                self._collect(encoders)
            except Exception as exc:  # one line, not a traceback: the next collection may well succeed
                log.warning("perftop: export: collecting failed: %s: %s", type(exc).__name__, exc)

    def _schedule(self, now: float) -> None:
        """Paced mode: time the next collection from the gaps between the last scrapes' arrivals, `now`
        being this one's (lock held)."""
        gap = self._typical_gap()
        if gap is not None:
            due = now + gap * (1 - self.JITTER) - self._took_s - self.MARGIN_S
            # Scrapes in a tight loop do not make collections back to back: two a second at most (one
            # would delay the first paced collection after an on-request one past the next scrape).
            self._due = max(due, self._started_at + self.MIN_PACED_GAP_S)
            self._cond.notify_all()

    def _usable(self, now: float) -> bool:
        """The latest collection may answer a scrape that arrived at `now` (lock held)."""
        newer = self._generation > (0 if self.every_s > 0 else self._served)
        return newer and now - self._started_at <= self.max_age_s

    def body(self, accept: str, fresh: bool = False) -> Rendering:
        """The answer to a scrape whose Accept header is `accept`; `fresh` insists on a new collection."""
        encoder, ctype = choose_encoder(accept)
        now = time.monotonic()
        fresh = fresh or self.always_fresh
        with self._cond:
            self._encoders.setdefault(ctype, encoder)
            if self.every_s > 0 and not fresh:
                self._cond.wait_for(lambda: self._generation > 0 or self._stopping, timeout=60)
            if not fresh and self._running and not self._usable(now):
                seen = self._generation  # one is under way (made ahead, or for another scrape): wait for it
                self._cond.wait_for(
                    lambda: self._generation != seen or not self._running or self._stopping, timeout=60
                )
            usable = not fresh and self._usable(now)
            body = self._bodies.get(ctype) if usable else None
            families = self._families if usable else None
            generation, started = self._generation, self._started_at
        ahead = usable
        if usable and body is None and families is not None:
            body = encoder(_Frozen(families))
            with self._cond:
                if self._generation == generation:
                    self._bodies[ctype] = body
        if body is None:
            body, generation, started = self._on_request(encoder, ctype, now if fresh else now - 1.0)
            ahead = False
        with self._cond:
            self._served = max(self._served, generation)
            if self.every_s == 0 and not self.always_fresh:
                self._scrapes.append(now)
                self._schedule(now)
        return Rendering(body, ctype, max(0.0, time.monotonic() - started), ahead)

    def _on_request(
        self, encoder: Callable[[Collector], bytes], ctype: str, since: float
    ) -> tuple[bytes, int, float]:
        """(body, generation, start) of a collection begun at `since` or later: the latest if it did,
        else the one under way for other requests, else a new one, though never sooner than
        ON_REQUEST_GAP_S after the previous one made for requests."""
        collected = False
        while True:
            with self._cond:
                self._encoders.setdefault(ctype, encoder)
                while True:
                    latest = self._families is not None and self._started_at >= since
                    if latest or collected or self._stopping:
                        families, generation, started = self._families, self._generation, self._started_at
                        body = self._bodies.get(ctype) if latest else None
                        break
                    wait = self._forced_at + self.ON_REQUEST_GAP_S - time.monotonic()
                    if not self._forcing and wait <= 0:
                        self._forcing, self._forced_at = True, time.monotonic()
                        encoders = dict(self._encoders)
                        families = None
                        break
                    self._cond.wait(None if self._forcing else wait)
            if families is not None or collected or self._stopping:
                break
            try:
                self._collect(encoders)
            finally:
                with self._cond:
                    self._forcing = False
                    self._cond.notify_all()
            collected = True
        if body is None:  # a collection that did not render this format (or none, when stopping)
            body = encoder(self.collector if families is None else _Frozen(families))
        return body, generation, started


def _is_native(fam: Metric) -> bool:
    return fam.name == NATIVE_FAMILY


def choose_encoder(accept: str) -> tuple[Callable[[Collector], bytes], str]:
    """The writer and content type a scrape's Accept header asks for: Prometheus' protobuf (native
    histograms included) if it offers it, else prometheus_client's choice of text format (written by
    text.py's faster equivalent where there is one), whose OpenMetrics 2.0 carries the native histograms
    and the others leave them out."""
    if protobuf.accepts(accept):
        return (lambda registry: protobuf.encode(registry.collect())), protobuf.CONTENT_TYPE
    from prometheus_client.exposition import choose_encoder as text_encoder

    encoder, ctype = text_encoder(accept)
    encoder = text.faster(encoder) or encoder
    version = re.search(r"version=(\d+)", ctype)
    if ctype.startswith("application/openmetrics-text") and version and int(version.group(1)) >= 2:
        return encoder, ctype

    def without_native(registry: Collector) -> bytes:
        return encoder(_Frozen([fam for fam in registry.collect() if not _is_native(fam)]))

    return without_native, ctype


# -- HTTP ------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """`/metrics` (text format, OpenMetrics or protobuf, by the Accept header; gzipped if the scraper
    accepts it, as Prometheus does) and `/healthz`. One request per connection, each socket operation
    bounded by REQUEST_TIMEOUT_S, so that no client holds a worker for long."""

    server: MetricsServer
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT_S

    def setup(self) -> None:
        """The request's head was read by the server already: read it from memory, write to the socket."""
        super().setup()
        self.rfile.close()
        self.rfile = io.BytesIO(self.server.heads.pop(self.connection, b""))

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path in ("/metrics", "/"):
            accept = self.headers.get("Accept", "")
            fresh = "no-cache" in self.headers.get("Cache-Control", "")
            try:
                rendering = self.server.prerender.body(accept, fresh)
            except Exception as exc:
                self.server.note(f"collecting failed: {type(exc).__name__}: {exc}")
                self._send(500, b"collecting failed; see the exporter's log\n", "text/plain; charset=utf-8")
                return
            gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
            body = rendering.body
            self._send(
                200,
                gzip.compress(body, compresslevel=1) if gzipped else body,
                rendering.content_type,
                gzipped,
                {
                    "X-Perftop-Data-Age": f"{rendering.age_s:.3f}",
                    "X-Perftop-Rendered": "ahead" if rendering.ahead else "on-request",
                },
            )
        else:
            self._send(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

    def _send(
        self,
        code: int,
        body: bytes,
        content_type: str,
        gzipped: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.close_connection = True
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a scrape every 15 s is not news."""


class MetricsServer(HTTPServer):
    """The exporter's HTTP server, bounded whatever clients do.

    An accepted connection waits in a selector (one thread for all of them) until its request starts to
    arrive; only then does one of WORKERS threads read and answer it. A connection silent for
    REQUEST_TIMEOUT_S is closed, and beyond MAX_WAITING silent connections the oldest is closed; beyond
    MAX_QUEUED connections waiting for a worker, a new one is closed at once. So 1000 half-open
    connections cost 1000 file descriptors for a few seconds at most, never 1000 threads, and a client
    that resets its connection costs no traceback (at most one line, for what is not a network error).

    `refresh_s`: 0 (the default) answers scrapes from collections paced by the scrapes, S > 0 from one
    every S seconds, None collects for each scrape (see Prerenderer)."""

    WORKERS = 8
    MAX_WAITING = 256
    MAX_QUEUED = 64
    request_queue_size = 128
    """The listen backlog: a burst of connections waits in the kernel, not refused (5 by default)."""

    def __init__(
        self, address: tuple[str, int], collector: HostCollector, refresh_s: float | None = 0.0
    ) -> None:
        from prometheus_client.registry import CollectorRegistry

        self.prerender = Prerenderer(collector, max(0.0, refresh_s or 0.0), always_fresh=refresh_s is None)
        self._waiting: dict[socket.socket, tuple[Any, float, bytearray]] = {}
        """Connections whose request's head has not fully arrived: (address, deadline, bytes so far)."""
        self.heads: dict[socket.socket, bytes] = {}
        """Whole request heads, for the handler about to answer them."""
        self._queued = 0
        self._lock = threading.Lock()
        self._closing = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._incoming: deque[tuple[socket.socket, Any]] = deque()
        self._workers = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="perftop-export-http")
        self._noted: set[str] = set()
        self.address_family = _family(address[0])
        super().__init__(address, _Handler)  # on failure, server_close() runs and the OSError propagates
        self.collector = collector
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._waiter = threading.Thread(target=self._wait_loop, name="perftop-export-accept", daemon=True)
        self._waiter.start()
        self.prerender.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the accepted connection to the selector thread; it dispatches it once it has a request."""
        with self._lock:
            self._incoming.append((request, client_address))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _wait_loop(self) -> None:
        """The selector thread: it must outlive anything one connection does."""
        while not self._closing:
            try:
                self._wait_once()
            except Exception as exc:
                self.note(f"the connection loop recovered from {type(exc).__name__}: {exc}")
                time.sleep(0.1)

    def _wait_once(self) -> None:
        """Read what the readable connections sent, take in the new ones, close the silent ones."""
        waiting = self._waiting
        for key, _ in self._selector.select(timeout=1.0):
            sock = key.fileobj
            if sock is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
                continue
            assert isinstance(sock, socket.socket)
            self._read_head(sock)
        with self._lock:
            incoming, self._incoming = self._incoming, deque()
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        for sock, address in incoming:
            try:
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ)
            except (OSError, ValueError):
                self.shutdown_request(sock)
                continue
            waiting[sock] = (address, deadline, bytearray())
        now = time.monotonic()
        stale = [sock for sock, (_, due, _) in waiting.items() if due <= now]
        stale += list(waiting)[: max(0, len(waiting) - len(stale) - self.MAX_WAITING)]
        for sock in dict.fromkeys(stale):
            self._drop(sock)

    def _read_head(self, sock: socket.socket) -> None:
        """Read what arrived of a request's head; dispatch it once whole (a GET has no body)."""
        address, _, head = self._waiting[sock]
        try:
            data = sock.recv(MAX_HEAD_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        head += data
        if not data or len(head) > MAX_HEAD_BYTES:
            self._drop(sock)
        elif b"\r\n\r\n" in head or b"\n\n" in head:
            self._selector.unregister(sock)
            del self._waiting[sock]
            sock.setblocking(True)
            self._dispatch(sock, address, bytes(head))

    def _drop(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        self._waiting.pop(sock, None)
        self.shutdown_request(sock)

    def _dispatch(self, sock: socket.socket, address: Any, head: bytes) -> None:
        with self._lock:
            full = self._queued >= self.MAX_QUEUED
            if not full:
                self._queued += 1
        if full or self._closing:
            self.shutdown_request(sock)
            return
        self._workers.submit(self._serve, sock, address, head)

    def _serve(self, sock: socket.socket, address: Any, head: bytes) -> None:
        try:
            with self._lock:
                self.heads[sock] = head
            self.finish_request(sock, address)
        except OSError:
            pass  # a client that reset, went away or stalled: not worth a line
        except Exception as exc:
            self.note(f"a request from {address[0]} failed: {type(exc).__name__}: {exc}")
        finally:
            self.shutdown_request(sock)
            with self._lock:
                self.heads.pop(sock, None)
                self._queued -= 1

    def note(self, message: str) -> None:
        """One line on stderr, once per distinct message (a client cannot flood the log)."""
        with self._lock:
            if message in self._noted or len(self._noted) >= 100:
                return
            self._noted.add(message)
        _say(f"export: {message}")

    def server_close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        waiter = getattr(self, "_waiter", None)
        if waiter is not None:
            waiter.join(timeout=5)
        for sock in list(self._waiting) + [sock for sock, _ in self._incoming]:
            self.shutdown_request(sock)
        self._waiting.clear()
        self._workers.shutdown(wait=False, cancel_futures=True)
        self.prerender.stop()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        super().server_close()


def _family(host: str) -> Any:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _say(message: str) -> None:
    """One `perftop: ` line on stderr, with any control character in it (paths, errors) escaped."""
    from perftop.render.units import safe_text

    sys.stderr.write(f"perftop: {safe_text(message, newlines=False)}\n")
    sys.stderr.flush()
