"""What `perftop export` collects: this host's agents, system and processes, as metric families.

HostCollector is a prometheus_client collector: each collection yields the metric families of one scrape
(the timings' as rows that write themselves, see timings.py; the others as prometheus_client's own),
which server.py renders in the format the scrape asks for (text, OpenMetrics, protobuf) and the OTLP
pusher translates. A collection samples the host (the SystemCollector is kept, so rates are measured between
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
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from perftop.export.histograms import DEFAULT_PER_DECADE, ladder
from perftop.export.prometheus.families import (
    NS_PER_S,
    QUERY_BUCKETS,
    QUERY_LE,
    Families,
    TimingDigest,
    count_buckets,
    digest_sketch,
    label_value,
    limit_value,
)
from perftop.wire import paths
from perftop.wire.protocol import BINS_DENSE, ProtocolError, unpack_counts

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from perftop.collectors.model import ProcessSample, SystemSample
    from perftop.collectors.process import ProcessCollector

# prometheus_client, psutil and the collectors are imported where they are used, so that registering
# this command on the CLI's parser costs nothing to the other commands.

log = logging.getLogger("perftop")

OWN_GAUGES = ("perftop_export_agents", "perftop_export_dropped_series", "perftop_export_collect_seconds")
"""The exporter's own series, one each per scrape."""
DEFAULT_MAX_QUERIES = 50
AGENT_TIMEOUT_S = 5.0
"""How long one agent may take to answer a scrape's stats request."""
RETIRED_PIDS_KEPT = 4096
"""How many departed workers' PIDs the exporter remembers, against counting a late final file twice."""
PRIME_S = 0.5
"""A process's CPU share in its first scrape is measured over this long (later ones: since the last)."""
REQUEST_TIMEOUT_S = 5.0
_Pending = tuple[int, int, Callable[[], None]]
"""A timing or route waiting for the series budget: (its count, its series, what emits them)."""


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off within, back on after if it was on (see HostCollector.collect)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def _unpack_timings(pid: int, stats: dict[str, Any]) -> None:
    """The packed counts of the timings' sketches in `stats` (protocol.packed_param) as lists, in place,
    so that every reader sees the dense form; a timing whose counts cannot be read is left out."""
    timings = stats.get("timings")
    if not isinstance(timings, dict):
        return
    for name, timing in list(timings.items()):
        sketch = timing.get("sketch") if isinstance(timing, dict) else None
        if isinstance(sketch, dict) and isinstance(sketch.get("counts"), str):
            try:
                sketch["counts"] = unpack_counts(sketch.pop("width", None), sketch["counts"])
            except ProtocolError as exc:
                log.debug("agent %s: timing %r left out: %s", pid, name, exc)
                del timings[name]


def _ppid(pid: int) -> int:
    """The parent PID of `pid`, from /proc (OSError once it has exited)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


class _Departed:
    """An agent gone since the previous collection: the last stats it answered, or the final ones it left."""

    def __init__(self, info: dict[str, Any], stats: dict[str, Any], ppid: int) -> None:
        self.info = info
        """The agent's `agent_info` from its last hello (empty for a worker never seen alive)."""
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
        from perftop.collectors.process import SharedReads
        from perftop.collectors.system import SystemCollector

        self._system = SystemCollector()
        self._processes: dict[int, ProcessCollector] = {}
        self._shared = SharedReads()
        """Shared by the process collectors: one walk of /proc a collection for their `nproc`, one read of
        each cgroup's files."""
        self._gone: set[int] = set()
        """--pid processes that exited: not looked at again (their PID may be reused)."""
        from perftop.collectors.agent_view import AgentPool

        self._agents = AgentPool(AGENT_TIMEOUT_S)
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
        """The latest stats of each agent that answered, of the services' processes (parents and
        workers)."""
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
            self._agents.close()
        self._pool.shutdown(wait=False)

    def describe(self) -> Iterable[Metric]:
        """Nothing: the families depend on what each scrape finds (registered with auto_describe off)."""
        return []

    # -- discovery -------------------------------------------------------------------------------------

    def _discover(self) -> dict[int, str]:
        """{pid: socket path} of every live agent in the socket dir, and of the --pid processes' agents."""
        from perftop.collectors.discovery import agents_in, find_agent

        found = agents_in(self.socket_dir)
        for pid in self.pids:
            if pid not in found and pid not in self._gone:
                path = find_agent(pid, self.explicit_socket_dir)
                if path is not None:
                    found[pid] = path
        return found

    def _sync_agents(self, found: dict[int, str]) -> None:
        """Keep clients for the agents found; the workers whose agent went away linger for one more
        collection."""
        for pid in self._lingering:
            self._retire(pid)
        self._lingering.clear()
        for pid, info in self._agents.sync(found).items():
            last = self._last.pop(pid, None)
            ppid = self._ppids.pop(pid, None)
            if last is not None and ppid in found:  # a worker of a parent with an agent (a service)
                self._lingering[pid] = _Departed(info, last, ppid)
        for pid in found:
            if pid not in self._ppids:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    self._ppids[pid] = _ppid(pid)
        self._read_finals(found)

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
        dirs = [self.socket_dir, *(os.path.dirname(path) for path in found.values())]
        parent_of: dict[int, int] = {}
        finals = read_finals(dirs, parents, self._started_at, self._finals_read, found, parent_of)
        for pid, stats in finals.items():
            departed = self._lingering.get(pid)
            if departed is not None:
                departed.stats = stats
            elif pid not in found and pid not in self._retired_pids:  # not counted already
                self._lingering[pid] = _Departed({}, stats, parent_of[pid])

    def _retire(self, pid: int) -> None:
        """Fold a departed worker's final counts into its service's."""
        departed = self._lingering[pid]
        self._retired.setdefault(departed.ppid, _ServiceCounts()).add(departed.stats, departed=True)
        self._retired_pids[pid] = None
        while len(self._retired_pids) > RETIRED_PIDS_KEPT:
            del self._retired_pids[next(iter(self._retired_pids))]

    def _fetch(self, pid: int) -> dict[str, Any] | None:
        """The since-start stats of the agent of `pid`, or None if it did not answer them. Its timings'
        sketches with dense bins, a third of the decoding (an agent older than that answers pairs)."""
        from perftop.collectors.agent_client import AgentError

        try:
            stats = self._agents.call(pid, "stats", {"window": None, "bins": BINS_DENSE, "packed": True})
        except (AgentError, OSError) as exc:
            log.debug("agent %s did not answer: %s", pid, exc)
            return None
        if not isinstance(stats, dict):
            log.debug("agent %s answered stats with something other than an object", pid)
            return None
        _unpack_timings(pid, stats)
        return stats

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
                    self._processes[pid] = ProcessCollector(pid, shared=self._shared)
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
        (the raw sketches, for the OTLP push).

        The cyclic garbage collector is paused meanwhile: the agents' stats decode to hundreds of
        thousands of small lists (20 agents x 100 timings: half a million `[index, count]` pairs), none
        in a cycle, which made it run hundreds of times per collection, over more objects each time (a
        third of the collection's CPU). Reference counting frees them as usual (before the collector
        resumes, which would otherwise visit them all once more)."""
        with self._lock, _gc_paused():
            return self._collect(agent_stats)

    def _collect(self, agent_stats: dict[int, dict[str, Any]] | None) -> list[Metric]:
        """collect()'s work, lock held."""
        started = time.perf_counter()
        found = self._discover()
        self._sync_agents(found)
        agents = self._agents.pids()
        futures = [self._pool.submit(self._fetch, pid) for pid in agents]
        system = self._system.sample()
        processes = self._sample_processes(found)
        fams = Families()
        self._system_families(fams, system)
        apps: dict[int, str] = {}
        pending: list[_Pending] = []
        roots = self._services(found)
        for pid, future in zip(agents, futures, strict=True):
            stats = future.result()
            info = self._agents.infos.get(pid, {})
            app = label_value(info.get("name") or (processes[pid].name if pid in processes else ""))
            apps[pid] = app
            labels = [app, str(pid)]
            if stats is not None:
                # Kept for the services' counts and a departing worker's last export only: the
                # stats of a host's agents are a million objects, for the GC to visit.
                if pid in roots or self._ppids.get(pid) in roots:
                    self._last[pid] = stats
                else:
                    self._last.pop(pid, None)
            fams.gauge(
                "perftop_agent_up", "1 if the agent answered this scrape, 0 if not", ["app", "pid"]
            ).add_metric(labels, 0.0 if stats is None else 1.0)
            if stats is not None:
                self._agent_families(fams, labels, info, stats, pending)
                if agent_stats is not None:
                    agent_stats[pid] = stats
        for pid, departed in sorted(self._lingering.items()):
            app = label_value(departed.info.get("name") or "")
            apps.setdefault(pid, app)
            labels = [app, str(pid)]
            fams.gauge(
                "perftop_agent_up", "1 if the agent answered this scrape, 0 if not", ["app", "pid"]
            ).add_metric(labels, 0.0)
            self._agent_families(fams, labels, departed.info, departed.stats, pending)
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

    def _service_families(self, fams: Families, found: Iterable[int], apps: dict[int, str]) -> None:
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
                key = [*labels, label_value(metric)]
                calls.add_metric(key, float(counts.calls[metric]))
                errors.add_metric(key, float(counts.errors.get(metric, 0)))
                seconds.add_metric(key, counts.seconds.get(metric, 0.0))
            if counts.counters:
                fam = fams.counter("perftop_service_counter", "Counters (perftop.count), idem", mnames)
                for metric, value in sorted(counts.counters.items()):
                    fam.add_metric([*labels, label_value(metric)], value)

    @staticmethod
    def _system_families(fams: Families, s: SystemSample) -> None:
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
    def _process_families(fams: Families, app: str, p: ProcessSample) -> None:
        labels = [label_value(app), str(p.pid), label_value(p.name)]
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
                queued.add_metric([*labels, label_value(b.address)], float(b.queued))
                if b.max is not None:
                    most.add_metric([*labels, label_value(b.address)], float(b.max))
        soft = fams.gauge("perftop_process_limit_soft", "Soft rlimit (+Inf: unlimited)", [*names, "limit"])
        hard = fams.gauge("perftop_process_limit_hard", "Hard rlimit (+Inf: unlimited)", [*names, "limit"])
        used = fams.gauge(
            "perftop_process_limit_used", "Usage the kernel checks the rlimit against", [*names, "limit"]
        )
        for lim in p.limits:
            soft.add_metric([*labels, lim.name], limit_value(lim.soft))
            hard.add_metric([*labels, lim.name], limit_value(lim.hard))
            if lim.used is not None:
                used.add_metric([*labels, lim.name], float(lim.used))
        cg = p.cgroup
        if cg is not None:
            g(
                "cgroup_memory_limit_bytes",
                "cgroup memory limit (+Inf: none)",
                limit_value(cg.memory_limit_bytes),
            )
            g("cgroup_memory_used_bytes", "cgroup memory in use", cg.memory_used_bytes, "bytes")
            g("cgroup_pids_limit", "cgroup task limit (+Inf: none)", limit_value(cg.pids_limit))
            g("cgroup_pids_current", "cgroup tasks", cg.pids_current)
            g(
                "cgroup_cpu_limit_cores",
                "cgroup CPU quota in cores (+Inf: none)",
                limit_value(cg.cpu_limit_cores),
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
        fams: Families,
        labels: list[str],
        info: dict[str, Any],
        stats: dict[str, Any],
        pending: list[_Pending],
    ) -> None:
        """The families of one agent's stats; its timings and routes go to `pending`, for the budget."""
        from prometheus_client.core import InfoMetricFamily

        base = ["app", "pid"]
        info_fam = fams.add(InfoMetricFamily("perftop_agent", "The perftop agent in a process", labels=base))
        assert isinstance(info_fam, InfoMetricFamily)
        info_fam.add_metric(
            labels,
            {k: label_value(info.get(k, "")) for k in ("agent_version", "python", "protocol")},
        )
        mlabels = [*base, "metric"]
        app, pid = labels
        for metric, timing in (stats.get("timings") or {}).items():
            sketch = timing.get("sketch") if isinstance(timing, dict) else None
            if not isinstance(sketch, dict) or not isinstance(sketch.get("count"), int):
                continue
            # Digested only if admitted: a tight --max-series also saves the work of what it leaves out.
            emit = partial(self._timing_series, fams, app, pid, metric, sketch)
            pending.append((sketch["count"], self.ladder.series + 7, emit))
        counters = stats.get("counters") or {}
        if counters:
            fam = fams.counter("perftop_counter", "Counters (perftop.count)", mlabels)
            for metric, counter in counters.items():
                total = counter.get("value") if isinstance(counter, dict) else None
                if isinstance(total, (int, float)):
                    fam.add_metric([app, pid, label_value(metric)], float(total))
        gauges = stats.get("gauges") or {}
        if gauges:
            gfam = fams.gauge("perftop_gauge", "Gauges (perftop.gauge)", mlabels)
            for metric, value in gauges.items():
                if isinstance(value, (int, float)):
                    gfam.add_metric([app, pid, label_value(metric)], float(value))
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
                    ofam.add_metric([app, pid, label_value(kind)], float(value))
        self._query_families(fams, labels, stats.get("queries"))
        self._request_families(fams, labels, stats.get("requests"), pending)

    def _timing_series(self, fams: Families, app: str, pid: str, metric: str, sketch: dict[str, Any]) -> None:
        """One timing's series: summary, classic histogram, native histogram, errors (none if its
        sketch is malformed), as one row of the timing families (see timings.py)."""
        from perftop.export.prometheus.timings import timing_rows

        try:
            d = digest_sketch(sketch, self.ladder, native=True)
        except (ValueError, TypeError, KeyError, IndexError, OverflowError):
            return
        timing_rows(fams, self.ladder)((app, pid, label_value(metric), d))

    def _request_families(
        self, fams: Families, labels: list[str], requests: Any, pending: list[_Pending]
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
            key = [*labels, label_value(route)]
            cost = self.ladder.series + len(QUERY_BUCKETS) + 3  # + its +Inf, _sum and _count
            pending.append((d.count, cost, partial(self._route_series, fams, key, d, counts, total)))

    def _route_series(
        self, fams: Families, key: list[str], d: TimingDigest, counts: list[float], total: float
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
        queries.add_metric(key, list(zip(QUERY_LE, counts, strict=True)), total)

    def _admit(self, fams: Families, pending: list[_Pending]) -> int:
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

    def _query_families(self, fams: Families, labels: list[str], queries: Any) -> None:
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
            key = [*labels, label_value(row.get("fingerprint"))]
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
