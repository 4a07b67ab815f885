"""The four families of the agents' timings (summary, classic histogram, native histogram, errors), kept
as one row per timing (its labels and its TimingDigest) and written straight from the rows.

A host of 20 agents x 100 timings is about 140,000 lines of text: as prometheus_client samples (a named
tuple and a labels dict each), made then formatted one by one, they were most of a collection's CPU.
Here each family writes a timing's lines in one `str.format` of a template made once per ladder, with
the label values escaped once per timing and the counts formatted through a cache kept between
collections, and its protobuf messages from the digest's columns (see protobuf.py). The output is byte
for byte what prometheus_client's writers and protobuf.encode_family give for the same families as
samples: `samples` makes those samples, on demand, for whoever reads the families generically
(prometheus_client's own writers, the OTLP translation, the tests).

This module imports prometheus_client (its families subclass `Metric`): import it where it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any, ClassVar

from prometheus_client.core import Metric
from prometheus_client.samples import BucketSpan, NativeHistogram, Sample
from prometheus_client.utils import floatToGoString as _go_string

from perftop.export import protobuf
from perftop.export.histograms import SCHEMA, ZERO_THRESHOLD, Ladder
from perftop.export.prometheus.families import NATIVE_FAMILY, QUANTILES, Families, TimingDigest

Row = tuple[str, str, str, TimingDigest]
"""One timing: its app, pid and metric label values (as exported, before escaping) and its digest."""

SUMMARY = "perftop_timing_seconds"
HISTOGRAM = "perftop_timing_histogram_seconds"
ERRORS = "perftop_timing_errors"
_Q_LABELS = tuple(str(q) for q in QUANTILES)


floatToGoString: Callable[[float], str] = _go_string
"""prometheus_client's formatting of sample values (typed)."""


class _Formatted(dict[float, str]):
    """Values as the exposition formats write them (prometheus_client's floatToGoString), made once: the
    counts of a host's histograms are a few thousand distinct numbers, the same from one collection to
    the next. Only values that cannot be -0.0 go through it (it would be shown as 0.0)."""

    def __missing__(self, value: float) -> str:
        if len(self) > 200_000:
            self.clear()
        shown = self[value] = floatToGoString(value)
        return shown


_FORMATTED = _Formatted()
_shown = _FORMATTED.__getitem__


def _escape(value: str) -> str:
    """A label value as the text formats escape it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


@lru_cache(maxsize=65536)
def _pairs(app: str, pid: str, metric: str) -> tuple[str, str, str]:
    """(`app="…"`, `metric="…",pid="…"`, both joined): a timing's label pairs in the text formats' sorted
    order, escaped once (the same timings come back every collection)."""
    a = f'app="{_escape(app)}"'
    mp = f'metric="{_escape(metric)}",pid="{_escape(pid)}"'
    return a, mp, f"{a},{mp}"


@lru_cache(maxsize=65536)
def _pb_labels(app: str, pid: str, metric: str) -> bytes:
    """A timing's protobuf LabelPairs, in the order its samples' labels have them."""
    return protobuf.label_pairs((("app", app), ("pid", pid), ("metric", metric)))


@lru_cache(maxsize=64)
def _bucket_template(lad: Ladder) -> str:
    """The text lines of one timing's classic histogram as a `str.format` template: {0} the app pair,
    {1} the metric and pid pairs, {2} all three, then one field per bucket count and the sum."""
    lines = [
        f'{HISTOGRAM}_bucket{{{{{{0}},le="{le}",{{1}}}}}} {{{k + 3}}}\n' for k, le in enumerate(lad.labels)
    ]
    n = len(lad.labels)
    lines.append(f"{HISTOGRAM}_count{{{{{{2}}}}}} {{{n + 2}}}\n")  # the +Inf bucket's count again
    lines.append(f"{HISTOGRAM}_sum{{{{{{2}}}}}} {{{n + 3}}}\n")
    return "".join(lines)


_SUMMARY_TEMPLATE = "".join(
    [f'{SUMMARY}{{{{{{0}},quantile="{q}"}}}} {{{k + 1}}}\n' for k, q in enumerate(_Q_LABELS)]
    + [f"{SUMMARY}_count{{{{{{0}}}}}} {{{len(QUANTILES) + 1}}}\n"]
    + [f"{SUMMARY}_sum{{{{{{0}}}}}} {{{len(QUANTILES) + 2}}}\n"]
)


class TimingFamily(Metric):
    """One of the timing families, over the rows it shares with the other three. `protobuf_family`
    writes it; `text_lines` writes those with a text form (all but the native histograms, which have
    `openmetrics2_lines` instead, for OpenMetrics 2.0 only); `samples` is the same family as
    prometheus_client samples.

    text.py and protobuf.py find these methods by name (they cannot import this module, which imports
    them)."""

    kind: ClassVar[int]
    """Its protobuf MetricType."""

    def __init__(self, name: str, documentation: str, typ: str, rows: list[Row]) -> None:
        self.rows = rows
        self._made: tuple[int, list[Sample]] | None = None
        super().__init__(name, documentation, typ)

    @property
    def samples(self) -> list[Sample]:
        """The rows as prometheus_client samples (made again when rows were added since)."""
        if self._made is None or self._made[0] != len(self.rows):
            self._made = (len(self.rows), [s for row in self.rows for s in self.row_samples(*row)])
        return self._made[1]

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        """Metric.__init__ sets an empty list: the rows are the samples."""
        if value:
            raise ValueError("a timing family's samples are its rows")

    def row_samples(self, app: str, pid: str, metric: str, d: TimingDigest) -> list[Sample]:
        """The samples of one row, as the prometheus_client family's add_metric makes them."""
        raise NotImplementedError

    def protobuf_metrics(self) -> list[bytes]:
        """The Metric message of every row."""
        raise NotImplementedError

    def protobuf_family(self) -> bytes:
        """The family as a delimited MetricFamily message (empty without rows), as encode_family has it."""
        if not self.rows:
            return b""
        return protobuf.family_message(
            self.protobuf_name(), self.documentation, self.kind, self.protobuf_metrics()
        )

    def protobuf_name(self) -> str:
        return self.name


class SummaryFamily(TimingFamily):
    kind = protobuf.SUMMARY

    def __init__(self, rows: list[Row]) -> None:
        super().__init__(SUMMARY, "Timings: quantiles from the agent's sketch", "summary", rows)

    def row_samples(self, app: str, pid: str, metric: str, d: TimingDigest) -> list[Sample]:
        base = {"app": app, "pid": pid, "metric": metric}
        out = [
            Sample(SUMMARY, {**base, "quantile": str(q)}, value)
            for q, value in zip(QUANTILES, d.quantiles, strict=True)
        ]
        out.append(Sample(SUMMARY + "_count", dict(base), d.count))
        out.append(Sample(SUMMARY + "_sum", dict(base), d.sum_s))
        return out

    def text_lines(self, out: list[str]) -> None:
        """Append the lines of every row (text format 0.0.4 and OpenMetrics write them alike)."""
        template = _SUMMARY_TEMPLATE.format
        go = floatToGoString
        for app, pid, metric, d in self.rows:
            q = d.quantiles
            out.append(
                template(
                    _pairs(app, pid, metric)[2], go(q[0]), go(q[1]), go(q[2]), _shown(d.count), go(d.sum_s)
                )
            )

    def protobuf_metrics(self) -> list[bytes]:
        return [
            protobuf.metric_message(
                _pb_labels(app, pid, metric),
                4,
                protobuf.summary_payload(d.count, d.sum_s, QUANTILES, d.quantiles),
            )
            for app, pid, metric, d in self.rows
        ]


class HistogramFamily(TimingFamily):
    kind = protobuf.HISTOGRAM

    def __init__(self, rows: list[Row], lad: Ladder) -> None:
        self.ladder = lad
        super().__init__(
            HISTOGRAM,
            "Timings in log-spaced buckets (the same on every host), for histogram_quantile() across "
            "processes and hosts",
            "histogram",
            rows,
        )

    def row_samples(self, app: str, pid: str, metric: str, d: TimingDigest) -> list[Sample]:
        base = {"app": app, "pid": pid, "metric": metric}
        out = [
            Sample(HISTOGRAM + "_bucket", {**base, "le": le}, float(n))
            for le, n in zip(self.ladder.labels, d.buckets, strict=True)
        ]
        out.append(Sample(HISTOGRAM + "_count", base, float(d.buckets[-1])))
        out.append(Sample(HISTOGRAM + "_sum", dict(base), d.sum_s))
        return out

    def text_lines(self, out: list[str]) -> None:
        """Append the lines of every row."""
        template = _bucket_template(self.ladder).format
        go = floatToGoString
        for app, pid, metric, d in self.rows:
            out.append(template(*_pairs(app, pid, metric), *map(_shown, d.buckets), go(d.sum_s)))

    def protobuf_metrics(self) -> list[bytes]:
        classic = protobuf.classic_payload
        bounds = protobuf.upper_bounds(self.ladder.labels[:-1])
        return [
            protobuf.metric_message(_pb_labels(app, pid, metric), 7, classic(d.buckets, bounds, d.sum_s))
            for app, pid, metric, d in self.rows
        ]


class NativeFamily(TimingFamily):
    kind = protobuf.HISTOGRAM

    def __init__(self, rows: list[Row]) -> None:
        super().__init__(
            NATIVE_FAMILY,
            "Timings as native histograms (protobuf or OpenMetrics 2.0 scrapes only), for "
            "histogram_quantile() across processes and hosts within 2%",
            "histogram",
            rows,
        )

    def row_samples(self, app: str, pid: str, metric: str, d: TimingDigest) -> list[Sample]:
        histogram = NativeHistogram(
            d.count,  # whole numbers: prometheus_client's OpenMetrics parser reads them as int
            d.sum_s,
            SCHEMA,
            ZERO_THRESHOLD,
            d.zero,
            pos_spans=[BucketSpan(offset, length) for offset, length in d.native_spans],
            pos_deltas=d.native_deltas,
        )
        labels = {"app": app, "pid": pid, "metric": metric}
        return [Sample(NATIVE_FAMILY, labels, float(d.count), native_histogram=histogram)]

    def openmetrics2_lines(self, out: list[str]) -> None:
        """Append the OpenMetrics 2.0 line of every row, as prometheus_client writes a native histogram
        (`{count:…,sum:…,schema:…,…,positive_spans:[offset:length,…],positive_deltas:[…]}`)."""
        zero = f",schema:{SCHEMA},zero_threshold:{ZERO_THRESHOLD},zero_count:"
        for app, pid, metric, d in self.rows:
            labels = _pairs(app, pid, metric)[2]
            line = f"{NATIVE_FAMILY}{{{labels}}} {{count:{d.count},sum:{d.sum_s}{zero}{d.zero}"
            spans = d.native_spans
            if spans:
                shown = ",".join([f"{offset}:{length}" for offset, length in spans])
                line += f",positive_spans:[{shown}],positive_deltas:[{','.join(map(str, d.native_deltas))}]"
            out.append(line + "}\n")

    def protobuf_metrics(self) -> list[bytes]:
        native = protobuf.native_payload
        return [
            protobuf.metric_message(
                _pb_labels(app, pid, metric),
                7,
                native(d.count, d.sum_s, SCHEMA, ZERO_THRESHOLD, d.zero, d.native_spans, d.native_deltas),
            )
            for app, pid, metric, d in self.rows
        ]


class ErrorsFamily(TimingFamily):
    kind = protobuf.COUNTER

    def __init__(self, rows: list[Row]) -> None:
        super().__init__(ERRORS, "Timed calls that raised", "counter", rows)

    def row_samples(self, app: str, pid: str, metric: str, d: TimingDigest) -> list[Sample]:
        return [Sample(ERRORS + "_total", {"app": app, "pid": pid, "metric": metric}, float(d.errors))]

    def text_lines(self, out: list[str]) -> None:
        """Append the lines of every row."""
        name = ERRORS + "_total{"
        for app, pid, metric, d in self.rows:
            out.append(f"{name}{_pairs(app, pid, metric)[2]}}} {_shown(d.errors)}\n")

    def protobuf_metrics(self) -> list[bytes]:
        return [
            protobuf.metric_message(_pb_labels(app, pid, metric), 3, protobuf.value_payload(float(d.errors)))
            for app, pid, metric, d in self.rows
        ]

    def protobuf_name(self) -> str:
        return ERRORS + "_total"


def timing_rows(fams: Families, lad: Ladder) -> Callable[[Row], Any]:
    """The function adding one timing's row to the four families of `fams`, made (in this order, as
    the families of the first timing) on first use."""
    found = fams.get(SUMMARY)
    if isinstance(found, SummaryFamily):
        return found.rows.append
    rows: list[Row] = []
    fams.add(SummaryFamily(rows))
    fams.add(HistogramFamily(rows, lad))
    fams.add(NativeFamily(rows))
    fams.add(ErrorsFamily(rows))
    return rows.append
