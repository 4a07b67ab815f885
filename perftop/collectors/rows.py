"""Typed rows for the viewer's tables, built once per tick from an `AgentView`, off the UI thread.

`AgentView` stays the JSON-shaped model (`snapshot --json`, recordings, replay); the panes show these
instead: every figure a pane shows is here, computed in one place (the error percentage included), so
the panes only format and lay out. A live view and a replayed one give the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from perftop.collectors.agent_view import AgentView


def _num(value: Any) -> float | None:
    """A finite number the agent sent, or None (a missing or malformed figure shows as '-')."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int:
    number = _num(value)
    return 0 if number is None else int(number)


def _opt_int(value: Any) -> int | None:
    number = _num(value)
    return None if number is None else int(number)


class _Keyed:
    """Rows are read by column key too (`row["p99_ms"]`): the tables name their columns and sort keys
    after the fields, which are the snapshot JSON's keys."""

    def __getitem__(self, key: str) -> Any:
        if key not in getattr(self, "__dataclass_fields__", ()):
            raise KeyError(key)
        return getattr(self, key)


@dataclass(frozen=True)
class TimingRow(_Keyed):
    """One timing: merged over every process, or (`pid` set) one worker's own figures."""

    name: str
    """The metric's name (also on a worker's row)."""
    count: int
    errors: int
    error_percent: float
    """Calls that raised, in percent of all calls (0 where there were none)."""
    rate_per_s: float
    mean_ms: float | None
    min_ms: float | None
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    max_ms: float | None
    pid: int | None = None
    """The worker this row is of; None for the merged row."""

    @classmethod
    def from_json(cls, name: str, row: Mapping[str, Any], pid: int | None = None) -> TimingRow:
        """From a row of the snapshot JSON's `timings` (or of a worker's, `AgentView.per_pid`)."""
        count, errors = _int(row.get("count")), _int(row.get("errors"))
        return cls(
            name=name,
            count=count,
            errors=errors,
            error_percent=100.0 * errors / count if count else 0.0,
            rate_per_s=_num(row.get("rate_per_s")) or 0.0,
            mean_ms=_num(row.get("mean_ms")),
            min_ms=_num(row.get("min_ms")),
            p50_ms=_num(row.get("p50_ms")),
            p90_ms=_num(row.get("p90_ms")),
            p95_ms=_num(row.get("p95_ms")),
            p99_ms=_num(row.get("p99_ms")),
            p999_ms=_num(row.get("p999_ms")),
            max_ms=_num(row.get("max_ms")),
            pid=pid,
        )

    @property
    def key(self) -> str:
        """A key unique among the rows of one view (table row key)."""
        return f"m:{self.name}" if self.pid is None else f"w:{self.pid}:{self.name}"

    @property
    def label(self) -> str:
        """What the metric column shows: the name, or the worker under its metric."""
        return self.name if self.pid is None else f"  └ pid {self.pid}"


@dataclass(frozen=True)
class CallSite:
    """Where in the app a statement was run."""

    file: str | None
    line: int | None
    function: str | None

    @classmethod
    def from_json(cls, site: Any) -> CallSite | None:
        if not isinstance(site, Mapping) or not site:
            return None
        line = site.get("line")
        return cls(
            file=None if site.get("file") is None else str(site.get("file")),
            line=line if isinstance(line, int) and not isinstance(line, bool) else None,
            function=None if site.get("function") is None else str(site.get("function")),
        )


@dataclass(frozen=True)
class QueryRow(_Keyed):
    """One SQL fingerprint's figures (app time, see the queries pane)."""

    fingerprint: str
    dialect: str
    count: int
    errors: int
    total_ms: float
    share_percent: float
    mean_ms: float | None
    p95_ms: float | None
    max_ms: float | None
    rows: int | None
    """Rows returned or affected; None where the driver never said (SQLite's SELECT rowcount is -1)."""
    n_plus_one: bool
    n_plus_one_site: CallSite | None
    routes: tuple[str, ...]
    server_mean_ms: float | None
    """The database's own mean time (pg_stat_statements), where known."""

    @classmethod
    def from_json(cls, q: Mapping[str, Any]) -> QueryRow:
        """From a row of the `queries` of the agent's `query_stats` (or of `merge_queries`)."""
        counted = q.get("rows_counted", 1) != 0
        routes = q.get("routes")
        return cls(
            fingerprint=str(q.get("fingerprint")),
            dialect=str(q.get("dialect", "")),
            count=_int(q.get("count")),
            errors=_int(q.get("errors")),
            total_ms=_num(q.get("total_ms")) or 0.0,
            share_percent=_num(q.get("share_percent")) or 0.0,
            mean_ms=_num(q.get("mean_ms")),
            p95_ms=_num(q.get("p95_ms")),
            max_ms=_num(q.get("max_ms")),
            rows=_int(q.get("rows")) if counted and q.get("rows") is not None else None,
            n_plus_one=bool(q.get("n_plus_one")),
            n_plus_one_site=CallSite.from_json(q.get("n_plus_one_site")),
            routes=tuple(str(r) for r in routes) if isinstance(routes, list) else (),
            server_mean_ms=_num(q.get("server_mean_ms")),
        )


@dataclass(frozen=True)
class SlowQuery:
    """One of the slowest recent executions."""

    duration_ms: float
    at: float | None
    """When it ran (unix seconds)."""
    fingerprint: str
    error: str | None
    call_site: CallSite | None

    @classmethod
    def from_json(cls, slow: Mapping[str, Any]) -> SlowQuery:
        return cls(
            duration_ms=_num(slow.get("duration_ms")) or 0.0,
            at=_num(slow.get("at")) or None,
            fingerprint=str(slow.get("fingerprint")),
            error=str(slow["error"]) if slow.get("error") else None,
            call_site=CallSite.from_json(slow.get("call_site")),
        )

    def age_s(self, now: float) -> float:
        """Seconds since it ran, at `now` (0 where the time is unknown)."""
        return max(0.0, now - (now if self.at is None else self.at))


@dataclass(frozen=True)
class Pool:
    """The connection pool(s), summed over the processes (waits: the worst process's)."""

    size: int | None
    checked_out: int | None
    overflow: int | None
    checkouts_per_s: float
    wait_p99_ms: float | None
    wait_max_ms: float | None

    @classmethod
    def from_json(cls, pool: Mapping[str, Any]) -> Pool:
        return cls(
            size=_opt_int(pool.get("size")),
            checked_out=_opt_int(pool.get("checked_out")),
            overflow=_opt_int(pool.get("overflow")),
            checkouts_per_s=_num(pool.get("checkouts_per_s")) or 0.0,
            wait_p99_ms=_num(pool.get("wait_p99_ms")),
            wait_max_ms=_num(pool.get("wait_max_ms")),
        )


@dataclass(frozen=True)
class QueryStats:
    """What the queries pane shows: fingerprints by total time, the slowest recent executions, the pool."""

    queries: tuple[QueryRow, ...]
    """In the order the agent (or the merge of the workers') listed them: by total time."""
    slow: tuple[SlowQuery, ...]
    pool: Pool | None
    slow_ms: float | None
    """The threshold of the slow list, where the hook said."""
    server_times: bool
    """The database's own times could not be read (the JSON says why)."""

    @classmethod
    def from_json(cls, stats: Mapping[str, Any]) -> QueryStats:
        """From `AgentView.queries` (the SQL hook's `query_stats`, workers merged)."""
        queries = [QueryRow.from_json(q) for q in stats.get("queries") or () if isinstance(q, Mapping)]
        slow = [SlowQuery.from_json(s) for s in stats.get("slow_queries") or () if isinstance(s, Mapping)]
        pool = stats.get("pool")
        return cls(
            queries=tuple(queries),
            slow=tuple(slow),
            pool=Pool.from_json(pool) if isinstance(pool, Mapping) and pool else None,
            slow_ms=_num(stats.get("slow_ms")),
            server_times=bool(stats.get("server_times")),
        )

    @property
    def empty(self) -> bool:
        """Nothing to show (no SQL recorded)."""
        return not (self.queries or self.slow or self.pool)


@dataclass(frozen=True)
class RequestQuery:
    """One query a slow request ran, in the order it ran."""

    ms: float | None
    fingerprint: str
    call_site: CallSite | None


@dataclass(frozen=True)
class SlowRequest:
    """One of a route's slowest recent requests, with its queries (a waterfall)."""

    duration_ms: float | None
    sql_ms: float | None
    query_count: int
    """The queries it ran (more than `queries` holds where the agent kept only the first ones)."""
    queries: tuple[RequestQuery, ...]

    @classmethod
    def from_json(cls, req: Mapping[str, Any]) -> SlowRequest:
        queries = tuple(
            RequestQuery(_num(q.get("ms")), str(q.get("fingerprint")), CallSite.from_json(q.get("call_site")))
            for q in req.get("queries") or ()
            if isinstance(q, Mapping)
        )
        return cls(
            duration_ms=_num(req.get("duration_ms")),
            sql_ms=_num(req.get("sql_ms")),
            query_count=_int(req["query_count"]) if "query_count" in req else len(queries),
            queries=queries,
        )


@dataclass(frozen=True)
class RequestRow:
    """Where a route's requests spend their time: SQL or code, how many queries, queue wait."""

    sql_ms_mean: float | None
    sql_share_percent: float | None
    """SQL time in percent of the requests' time."""
    queries_mean: float | None
    queries_p99: float | None
    queries_max: float | None
    queue_p99_ms: float | None
    top_fingerprints: tuple[str, ...]
    slowest: tuple[SlowRequest, ...]

    @classmethod
    def from_json(cls, r: Mapping[str, Any]) -> RequestRow:
        """From a row of the snapshot JSON's `requests` (by route)."""
        return cls(
            sql_ms_mean=_num(r.get("sql_ms_mean")),
            sql_share_percent=_num(r.get("sql_share_percent")),
            queries_mean=_num(r.get("queries_mean")),
            queries_p99=_num(r.get("queries_p99")),
            queries_max=_num(r.get("queries_max")),
            queue_p99_ms=_num(r.get("queue_p99_ms")),
            top_fingerprints=tuple(str(fp) for fp in r.get("top_fingerprints") or ()),
            slowest=tuple(SlowRequest.from_json(s) for s in r.get("slowest") or () if isinstance(s, Mapping)),
        )


@dataclass(frozen=True)
class Counter:
    """A counter's value and rate, summed over the processes."""

    name: str
    value: float | None
    rate_per_s: float


@dataclass(frozen=True)
class ViewRows:
    """Everything the timings and queries panes show of one `AgentView`."""

    view: AgentView
    """The view these rows are of (its sketches feed the detail screen's histogram)."""
    timings: tuple[TimingRow, ...]
    """The merged row of each metric."""
    workers: Mapping[str, tuple[TimingRow, ...]] = field(default_factory=dict)
    """Each worker's row of a metric, by metric name, in PID order (only where several report)."""
    counters: tuple[Counter, ...] = ()
    gauges: tuple[tuple[str, float], ...] = ()
    queries: QueryStats | None = None
    """None where the process records no SQL."""
    requests: Mapping[str, RequestRow] = field(default_factory=dict)
    """The request breakdown of each web route ("GET /orders/{id}"), for the detail of its timing."""

    def request_of(self, metric: str) -> RequestRow | None:
        """The breakdown of the route a timing (`http GET /orders/{id}`) is of, if it is a route's."""
        return self.requests.get(metric.split(" ", 1)[-1])


def view_rows(view: AgentView) -> ViewRows:
    """The rows of `view`: call it in the sampler's thread, once per tick."""
    workers: dict[str, list[TimingRow]] = {}
    for pid, per in sorted(view.per_pid.items()):
        for name, row in per.items():
            workers.setdefault(name, []).append(TimingRow.from_json(name, row, pid))
    queries = QueryStats.from_json(view.queries) if isinstance(view.queries, Mapping) else None
    return ViewRows(
        view=view,
        timings=tuple(TimingRow.from_json(name, row) for name, row in view.timings.items()),
        workers={name: tuple(rows) for name, rows in workers.items()},
        counters=tuple(
            Counter(name, _num(c.get("value")), _num(c.get("rate_per_s")) or 0.0)
            for name, c in sorted(view.counters.items())
        ),
        gauges=tuple(sorted(view.gauges.items())),
        queries=None if queries is None or queries.empty else queries,
        requests={
            route: RequestRow.from_json(r) for route, r in view.requests.items() if isinstance(r, Mapping)
        },
    )
