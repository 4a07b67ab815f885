"""A metric's detail: its latency distribution drawn from the sketch, and p50/p99 over time."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, Sparkline, Static

from perftop.collectors.rows import RequestRow, TimingRow
from perftop.render.sql import compact_sql
from perftop.render.units import fmt_ms, short_path
from perftop.wire.sketch import Sketch, bucket_value


def histogram(sketch: Sketch, rows: int = 16) -> list[tuple[float, float, int]]:
    """The sketch's buckets regrouped into at most `rows` log-spaced bins: (low_ms, high_ms, count)."""
    if not sketch.bins:
        return []
    lo_i, hi_i = min(sketch.bins), max(sketch.bins)
    span = hi_i - lo_i + 1
    per = max(1, math.ceil(span / rows))
    out: list[tuple[float, float, int]] = []
    for start in range(lo_i, hi_i + 1, per):
        n = sum(sketch.bins.get(i, 0) for i in range(start, start + per))
        out.append((bucket_value(start - 1) / 1e6, bucket_value(start + per - 1) / 1e6, n))
    return out


def histogram_text(sketch: Sketch, width: int = 50, rows: int = 16) -> str:
    """Horizontal bars, one per log-spaced bin, with the bin's range and count."""
    bins = histogram(sketch, rows)
    if not bins:
        return "no samples in this window"
    top = max(n for _, _, n in bins) or 1
    lines = []
    for lo, hi, n in bins:
        bar = "█" * round(n / top * width)
        lines.append(f"{fmt_ms(lo):>8} to {fmt_ms(hi):<8} {bar} {n}")
    return "\n".join(lines)


def breakdown_text(r: RequestRow) -> str:
    """A route's request breakdown: SQL time and queries per request, queue wait, the fingerprints its
    requests run most, and its slowest recent requests with their queries in order (a waterfall)."""
    share = r.sql_share_percent
    lines = [
        f"SQL {fmt_ms(r.sql_ms_mean)} per request on average"
        + (
            f" ({share:.0f}% of the time; the rest is the app's own code and waits)"
            if share is not None
            else ""
        ),
        f"queries per request: mean {r.queries_mean or 0:.1f}, p99 {r.queries_p99 or 0:.0f}, "
        f"max {r.queries_max or 0:.0f}",
    ]
    if r.queue_p99_ms is not None:
        lines.append(f"queue wait p99 {fmt_ms(r.queue_p99_ms)} (X-Request-Start)")
    if r.top_fingerprints:
        lines.append("runs most:")
        lines.extend(f"  {compact_sql(fp, 100)}" for fp in r.top_fingerprints)
    for req in r.slowest:
        lines.append(
            f"slow request: {fmt_ms(req.duration_ms)}, SQL {fmt_ms(req.sql_ms)} in {req.query_count} queries"
        )
        for q in req.queries:
            site = q.call_site
            where = "-" if site is None else f"{short_path(site.file, keep=2, longer_than=0)}:{site.line}"
            lines.append(f"  {fmt_ms(q.ms):>9}  {compact_sql(q.fingerprint, 70)}  {where}")
    return "\n".join(lines)


class MetricDetail(ModalScreen[None]):
    """Escape closes it."""

    DEFAULT_CSS = """
    MetricDetail { align: center middle; }
    MetricDetail > VerticalScroll {
        width: 90%; height: 90%; border: thick $accent; background: $surface; padding: 0 1;
    }
    MetricDetail .title { text-style: bold; color: $accent; }
    MetricDetail .section { color: $secondary; text-style: bold; margin-top: 1; }
    MetricDetail Sparkline { height: 2; }
    MetricDetail #hist { height: auto; }
    """

    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def __init__(
        self,
        name: str,
        sketch: Sketch,
        row: TimingRow | Mapping[str, Any],
        p50_history: list[float],
        p99_history: list[float],
        errors_by_type: dict[str, int],
        request: RequestRow | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.request = (
            request if request is None or isinstance(request, RequestRow) else RequestRow.from_json(request)
        )
        """The route's request breakdown (SQL time, queries, slowest requests), for a web route."""
        self.metric = name
        self.sketch = sketch
        self.row = row if isinstance(row, TimingRow) else TimingRow.from_json(name, row)
        self.p50_history = p50_history
        self.p99_history = p99_history
        self.errors_by_type = errors_by_type

    def compose(self) -> ComposeResult:
        r = self.row
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors_by_type.items(), key=lambda kv: -kv[1]))
        with VerticalScroll():
            yield Label(self.metric, classes="title", markup=False)
            yield Label(
                f"n {r.count}  errors {r.errors}  mean {fmt_ms(r.mean_ms)}"
                f"  p50 {fmt_ms(r.p50_ms)}  p99 {fmt_ms(r.p99_ms)}"
                f"  p99.9 {fmt_ms(r.p999_ms)}  max {fmt_ms(r.max_ms)}"
            )
            if errors:
                yield Label(f"errors by type: {errors}", markup=False)
            yield Label("distribution (log-spaced bins)", classes="section")
            yield Static(histogram_text(self.sketch), id="hist")
            yield Label(f"p99 over time (last {len(self.p99_history)} samples)", classes="section")
            yield Sparkline(self.p99_history, id="p99-spark")
            yield Label(f"p50 over time (last {len(self.p50_history)} samples)", classes="section")
            yield Sparkline(self.p50_history, id="p50-spark")
            if self.request is not None:
                yield Label("per request: database or code?", classes="section")
                yield Static(Content(breakdown_text(self.request)), id="breakdown")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
