"""The per-route request breakdown of one or more agents (workers merged): the `requests` of the snapshot.

Each agent reports, per route ("GET /orders/{id}"), sketches of request duration, SQL time per request,
queries per request and queue wait, their totals, the fingerprints its requests ran most and its slowest
recent requests with their queries in order (perftop/agent/routes.py). Workers merge by adding sketch
buckets and totals, never by averaging percentiles. What an agent sends is checked: a malformed route is
skipped, never a crash.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from perftop.wire.sketch import Sketch, SketchError

SLOWEST_SHOWN = 10


def _sketch(value: Any) -> Sketch:
    return Sketch.from_dict(value) if value is not None else Sketch()


def merge_requests(reports: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """The routes of several agents' `requests` reports, merged."""
    merged: dict[str, dict[str, Any]] = {}
    for report in reports:
        if not isinstance(report, Mapping):
            continue
        for route, data in report.items():
            if not isinstance(route, str) or not isinstance(data, Mapping):
                continue
            try:
                parts = {k: _sketch(data.get(k)) for k in ("duration_ns", "sql_ns", "queries", "queue_ns")}
                totals = (int(data.get("count", 0)), int(data.get("errors", 0)))
                ns = (int(data.get("duration_ns_total", 0)), int(data.get("sql_ns_total", 0)))
            except (SketchError, TypeError, ValueError):
                continue
            into = merged.setdefault(
                route,
                {
                    "count": 0,
                    "errors": 0,
                    "duration_total_ns": 0,
                    "sql_total_ns": 0,
                    "fingerprints": {},
                    "slowest": [],
                }
                | {k: Sketch() for k in parts},
            )
            for key, sketch in parts.items():
                into[key].merge(sketch)
            into["count"] += totals[0]
            into["errors"] += totals[1]
            into["duration_total_ns"] += ns[0]
            into["sql_total_ns"] += ns[1]
            for item in data.get("top_fingerprints") or ():
                if isinstance(item, Mapping) and isinstance(item.get("fingerprint"), str):
                    fp = item["fingerprint"]
                    into["fingerprints"][fp] = into["fingerprints"].get(fp, 0) + int(item.get("requests", 0))
            into["slowest"].extend(s for s in data.get("slowest") or () if isinstance(s, Mapping))
    return merged


def request_rows(merged: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The CLI contract's `requests` rows by route, from `merge_requests`."""
    rows: dict[str, dict[str, Any]] = {}
    for route, r in merged.items():
        duration, sql, queries, queue = r["duration_ns"], r["sql_ns"], r["queries"], r["queue_ns"]
        p50, p99 = (None if v is None else v / 1e6 for v in duration.quantiles([0.5, 0.99]))
        queue_p99 = queue.quantile(0.99)
        count = r["count"]
        top = sorted(r["fingerprints"].items(), key=lambda kv: -kv[1])[:5]
        rows[route] = {
            "count": count,
            "errors": r["errors"],
            "p50_ms": p50,
            "p99_ms": p99,
            "max_ms": duration.max / 1e6 if duration.count else None,
            "sql_ms_mean": None if sql.mean is None else sql.mean / 1e6,
            "sql_share_percent": (
                100.0 * r["sql_total_ns"] / r["duration_total_ns"] if r["duration_total_ns"] else None
            ),
            "queries_mean": queries.mean,
            "queries_p99": queries.quantile(0.99),
            "queries_max": queries.max if queries.count else None,
            "queue_p99_ms": None if queue_p99 is None else queue_p99 / 1e6,
            "top_fingerprints": [fp for fp, _ in top],
            "slowest": sorted(r["slowest"], key=lambda s: -float(s.get("duration_ms") or 0))[:SLOWEST_SHOWN],
        }
    return rows
