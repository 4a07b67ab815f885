"""`perftop export --otlp URL`: the scrape endpoint's data, pushed over OTLP/HTTP on an interval, for fleets
that run an OpenTelemetry Collector.

One thread collects every `--otlp-interval` seconds through the scrape endpoint's own HostCollector (the
same families, plus the agents' raw sketches) and turns it into the OpenTelemetry SDK's point data; a
second thread pushes the newest collection with opentelemetry-exporter-otlp-proto-http. Between them is a
queue of one: a collection made while a push is under way or backing off replaces the one waiting (the
data is cumulative, so only resolution is lost; it is counted). A failed push backs off exponentially,
from the interval up to BACKOFF_CAP_S, and is counted and logged; collecting never waits for a push.

Mapping (names and attributes are the Prometheus ones, so a Collector that writes to Prometheus gives the
series the dashboard asks for; counters get their `_total` back there):
- Resources: one per process (`host.name`, `service.name` = the agent's name, `process.pid`,
  `service.instance.id` = host:pid): series are per process, never merged here. Merge them downstream:
  exponential histograms of one scale add bucket by bucket. The host's metrics and the exporter's own go
  under a resource of the exporter (`service.name` perftop-export).
- Gauges (and info families, as a gauge of 1) -> Gauge; counters -> cumulative monotonic Sum, starting at
  the agent's start for an agent's data, the process's start for `perftop_process_*`, the exporter's own
  start for the rest.
- Timings (`perftop_timing_histogram_seconds`) and per route SQL time (`perftop_request_sql_seconds`) and
  queries per request (`perftop_request_queries`) -> ExponentialHistogram, built from the agent's sketch
  buckets. The SDK's instruments record raw values and take no pre-aggregated data, but its point types
  and exporter do. Scale 5 (base 2**(1/32)): a bucket's log-midpoint is within 1.08% of every value in
  it, which with the sketch's own 0.8% keeps any quantile read from the buckets within 1.9%. Summaries and
  fixed-bucket histograms are not pushed: the exponential histogram carries their count, sum, min and max.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from perftop._version import __version__
from perftop.export.notes import say
from perftop.render.units import safe_text
from perftop.wire.sketch import ALPHA, GAMMA, MAX_BINS, MAX_WIRE_BINS, SketchError, bucket_value

if TYPE_CHECKING:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import (
        ExponentialHistogramDataPoint,
        MetricsData,
    )
    from prometheus_client.core import Metric

    from perftop.export.prometheus.collector import HostCollector

# opentelemetry is imported where it is used: it is an optional extra (`perftop[otlp]`), and registering
# the export command's flags must cost the other commands nothing.

SCALE = 5
"""Scale of every exponential histogram pushed: bucket bounds are powers of 2**(2**-SCALE)."""
DEFAULT_INTERVAL_S = 10.0
BACKOFF_CAP_S = 120.0
"""The longest wait between two pushes while the receiver keeps failing."""
MIN_TIMEOUT_S = 3.0
MAX_TIMEOUT_S = 10.0
"""One push (with the exporter's own retries of 429/502/503/504 and connection errors inside it, after
1 s, 2 s, 4 s) gives up after the interval, kept between these two."""
MAX_REASON = 200
SERVICE = "perftop-export"
"""`service.name` of the exporter's own resource (the host's metrics and the push's own counters)."""
NS_PER_S = 1_000_000_000

SKETCH_HISTOGRAMS: tuple[tuple[str, str, str, float, str], ...] = (
    ("perftop_timing_histogram_seconds", "Timings", "s", 1e-9, "metric"),
    ("perftop_request_sql_seconds", "SQL time per web request, by route", "s", 1e-9, "route"),
    ("perftop_request_queries", "SQL queries per web request, by route", "{query}", 1.0, "route"),
)
"""(name, description, unit, factor from the sketch's values, key attribute) of the exponential histograms."""
UNITS = {"seconds": "s", "bytes": "By"}


class OtlpUnavailable(Exception):
    """The opentelemetry packages `--otlp` needs are not installed."""


def metrics_endpoint(url: str) -> str:
    """The OTLP/HTTP metrics endpoint of `url`: `URL/v1/metrics`, or `url` itself if it already ends so.
    ValueError with a one-line message unless it is an http(s) URL with a host and a valid port."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--otlp wants an http:// or https:// URL with a host, not {url!r}")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        raise ValueError(f"--otlp URL has an invalid port: {url!r}") from None
    if parts.query or parts.fragment:
        raise ValueError(f"--otlp URL must not have a query or fragment: {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/v1/metrics"):
        path += "/v1/metrics"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def exponential_index(value: float, scale: int = SCALE) -> int:
    """The index i of the bucket (base**i, base**(i+1)] that holds a positive value, base = 2**(2**-scale)."""
    return math.ceil(math.log2(value) * (1 << scale)) - 1


@dataclass(frozen=True)
class ExponentialBuckets:
    """A sketch's values in the buckets of an OTLP exponential histogram (values multiplied by a factor)."""

    count: int
    sum: float
    min: float
    max: float
    zero_count: int
    offset: int
    bucket_counts: list[int]


def exponential_buckets(data: Any, factor: float = 1.0, scale: int = SCALE) -> ExponentialBuckets | None:
    """The exponential histogram of a serialized sketch (`Sketch.to_dict`, or with dense bins: see
    protocol.bins_form), None when it is empty.

    Each sketch bin's count goes to the bucket of its representative value, clamped to the sketch's exact
    min and max (every value of the bin lies within the sketch's accuracy of it, and within [min, max]).
    Values <= 0 are the zero count. SketchError when the sketch is malformed (checked as `Sketch.from_dict`
    does, but over whole columns: a push maps thousands of sketches of hundreds of bins)."""
    if not isinstance(data, dict) or data.get("alpha") != ALPHA:
        raise SketchError("not a sketch of this accuracy")
    try:
        count, zero = data["count"], data["zero"]
        bins = data["bins"] if "bins" in data else data["counts"]
        if not (type(count) is int and type(zero) is int and isinstance(bins, list)):
            raise SketchError("count and zero must be integers, bins a list")
        if count == 0:
            return None
        if len(bins) > MAX_WIRE_BINS:
            raise SketchError("too many bins")
        if "bins" in data:
            indices, counts = (list(column) for column in zip(*bins, strict=True)) if bins else ([], [])
        else:
            indices, counts = _dense_columns(data["lo"], bins)
        low, high, total = (float(data[k]) * factor for k in ("min", "max", "sum"))
    except (KeyError, TypeError, ValueError) as exc:
        raise SketchError(f"malformed sketch: {exc!r}") from None
    if not set(map(type, indices)) <= {int} or not set(map(type, counts)) <= {int}:
        raise SketchError("bins must be [index, count] pairs of integers")
    if min(counts, default=0) < 0 or zero < 0 or sum(counts) + zero != count:
        raise SketchError("bin counts do not add up to the count")
    if not all(map(math.isfinite, (low, high, total))) or low > high or (indices and high <= 0):
        raise SketchError("min, max and sum must be finite, min <= max, max > 0 with positive values")
    if indices != sorted(indices):
        order = sorted(range(len(indices)), key=indices.__getitem__)
        indices, counts = [indices[k] for k in order], [counts[k] for k in order]
    if not indices:
        return ExponentialBuckets(count, total, low, high, zero, 0, [])
    if indices[-1] - indices[0] >= MAX_BINS:  # a span beyond MAX_BINS folds its lowest bins, as in Sketch
        lowest = indices[-1] - MAX_BINS + 1
        indices = [max(index, lowest) for index in indices]
    # log2 of bin i's representative value is i * log2(GAMMA) + log2(representative of bin 0); its bucket
    # is ceil(that * 2**scale) - 1, which grows with i. Only the lowest bin's representative can be under
    # the exact min, and only the highest's over the exact max: those two are clamped.
    per_bin, first, steps = math.log2(GAMMA), math.log2(bucket_value(0) * factor), 1 << scale
    ks = [math.ceil((index * per_bin + first) * steps) - 1 for index in indices]
    if low > 0:
        ks[0] = max(ks[0], math.ceil(math.log2(low) * steps) - 1)
    ks[-1] = min(ks[-1], math.ceil(math.log2(high) * steps) - 1)
    ks[0] = min(ks[0], ks[-1])
    if len(ks) > 2 and (ks[1] < ks[0] or ks[-2] > ks[-1]):  # a malformed sketch: bins beyond [min, max]
        ks[1:-1] = [min(max(k, ks[0]), ks[-1]) for k in ks[1:-1]]
    offset = ks[0]
    dense = [0] * (ks[-1] - offset + 1)
    for k, n in zip(ks, counts, strict=True):
        dense[k - offset] += n
    return ExponentialBuckets(count, total, low, high, zero, offset, dense)


def _dense_columns(lo: Any, counts: list[Any]) -> tuple[list[int], list[Any]]:
    """The populated bins of dense ones (`counts[k]` in bin `lo + k`): (indices, counts), as pairs give
    them. TypeError unless `lo` is an integer."""
    if type(lo) is not int:
        raise TypeError("lo must be an integer")
    if 0 not in counts:
        return list(range(lo, lo + len(counts))), counts
    populated = [k for k, n in enumerate(counts) if n != 0]
    return [lo + k for k in populated], [counts[k] for k in populated]


@dataclass
class _Series:
    """One metric of one resource, its points accumulating."""

    kind: str
    """gauge, sum or exponential."""
    description: str
    unit: str
    points: list[Any] = field(default_factory=list)


@dataclass
class _Resource:
    attributes: dict[str, str | int]
    metrics: dict[str, _Series] = field(default_factory=dict)

    def series(self, name: str, kind: str, description: str, unit: str) -> _Series:
        found = self.metrics.get(name)
        if found is None:
            found = self.metrics[name] = _Series(kind, description, unit)
        return found


@dataclass
class PushStats:
    """What the pusher did so far: pushed as the exporter's own metrics, and logged."""

    collections: int = 0
    pushes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    skipped: int = 0
    """Collections replaced by a newer one before they could be pushed."""
    backoff_s: float = 0.0
    """The wait before the next push (0 while pushes succeed)."""


class Translator:
    """Turns one collection (the scrape's families and the agents' stats) into OTLP point data."""

    def __init__(self, hostname: str, started_at: float) -> None:
        self.hostname = hostname
        self.started_ns = int(started_at * NS_PER_S)

    def _resource(self, resources: dict[str, _Resource], pid: str, app: str) -> _Resource:
        found = resources.get(pid)
        if found is None:
            number = int(pid) if pid.isdigit() else os.getpid()
            attributes: dict[str, str | int] = {
                "host.name": self.hostname,
                "service.name": app,
                "process.pid": number,
                "service.instance.id": f"{self.hostname}:{number}",
            }
            found = resources[pid] = _Resource(attributes)
        return found

    def translate(
        self,
        families: Iterable[Metric],
        agent_stats: dict[int, dict[str, Any]],
        now: float,
    ) -> MetricsData:
        """The MetricsData of one collection made at `now` (unix seconds)."""
        from opentelemetry.sdk.metrics.export import NumberDataPoint

        now_ns = int(now * NS_PER_S)
        resources: dict[str, _Resource] = {}
        self._resource(resources, "", SERVICE)
        families = list(families)
        process_start: dict[str, int] = {}
        for fam in families:
            if fam.name == "perftop_process_start_time_seconds":
                for s in fam.samples:
                    process_start[s.labels.get("pid", "")] = int(s.value * NS_PER_S)
        agent_start = {
            str(pid): int((float(data["now"]) - float(data["span_s"])) * NS_PER_S)
            for pid, data in agent_stats.items()
            if isinstance(data.get("now"), (int, float)) and isinstance(data.get("span_s"), (int, float))
        }
        for fam in families:
            if fam.type in ("gauge", "info", "unknown"):
                kind, name_of = "gauge", None
            elif fam.type == "counter":
                kind, name_of = "sum", fam.name + "_total"
            else:
                continue  # summaries and histograms: the exponential histograms below carry them
            unit = UNITS.get(fam.unit, fam.unit)
            for s in fam.samples:
                if name_of is not None and s.name != name_of:
                    continue  # a counter's `_created`
                name = fam.name if kind == "sum" else s.name
                pid = s.labels.get("pid", "")
                resource = self._resource(resources, pid, s.labels.get("app") or SERVICE)
                if kind == "sum":
                    process_first = name.startswith("perftop_process_")
                    starts = (process_start, agent_start) if process_first else (agent_start, process_start)
                    start = next((m[pid] for m in starts if pid in m), self.started_ns)
                else:
                    start = 0
                resource.series(name, kind, fam.documentation, unit).points.append(
                    NumberDataPoint(dict(s.labels), start, now_ns, float(s.value))
                )
        for pid_number, data in agent_stats.items():
            pid = str(pid_number)
            found = resources.get(pid)
            if found is not None:  # else its families are absent: nothing to add to
                app = str(found.attributes["service.name"])
                self._agent_histograms(found, app, pid, data, agent_start.get(pid, self.started_ns), now_ns)
        return self._assemble(resources)

    @staticmethod
    def _agent_histograms(
        resource: _Resource, app: str, pid: str, data: dict[str, Any], start_ns: int, now_ns: int
    ) -> None:
        """The exponential histograms of one agent's stats: its timings, and each route's SQL time and
        queries per request."""
        sketches: list[tuple[int, str, Any]] = []
        timings, requests = data.get("timings"), data.get("requests")
        if isinstance(timings, dict):
            sketches += [(0, name, t.get("sketch")) for name, t in timings.items() if isinstance(t, dict)]
        if isinstance(requests, dict):
            for route, r in requests.items():
                if isinstance(r, dict):
                    sketches += [(1, route, r.get("sql_ns")), (2, route, r.get("queries"))]
        for position, key, sketch in sketches:
            name, description, unit, factor, label = SKETCH_HISTOGRAMS[position]
            point = _exponential_point(
                sketch, factor, {"app": app, "pid": pid, label: safe_text(key, False)}, start_ns, now_ns
            )
            if point is not None:
                resource.series(name, "exponential", description, unit).points.append(point)

    @staticmethod
    def _assemble(resources: dict[str, _Resource]) -> MetricsData:
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            ExponentialHistogram,
            Gauge,
            MetricsData,
            ResourceMetrics,
            ScopeMetrics,
            Sum,
        )
        from opentelemetry.sdk.metrics.export import Metric as OtelMetric
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        cumulative = AggregationTemporality.CUMULATIVE
        scope = InstrumentationScope("perftop", __version__)
        out = []
        for resource in resources.values():
            metrics = []
            for name, series in resource.metrics.items():
                if not series.points:
                    continue
                data: Gauge | Sum | ExponentialHistogram
                if series.kind == "gauge":
                    data = Gauge(series.points)
                elif series.kind == "sum":
                    data = Sum(series.points, cumulative, True)
                else:
                    data = ExponentialHistogram(series.points, cumulative)
                metrics.append(OtelMetric(name, series.description, series.unit, data))
            if metrics:
                out.append(
                    ResourceMetrics(
                        Resource.create(resource.attributes), [ScopeMetrics(scope, metrics, "")], ""
                    )
                )
        return MetricsData(out)


def _exponential_point(
    sketch: Any, factor: float, attributes: dict[str, str], start_ns: int, now_ns: int
) -> ExponentialHistogramDataPoint | None:
    from opentelemetry.sdk.metrics.export import Buckets, ExponentialHistogramDataPoint

    try:
        b = exponential_buckets(sketch, factor)
    except (SketchError, OverflowError):
        return None
    if b is None:
        return None
    return ExponentialHistogramDataPoint(
        attributes=attributes,
        start_time_unix_nano=start_ns,
        time_unix_nano=now_ns,
        count=b.count,
        sum=b.sum,
        scale=SCALE,
        zero_count=b.zero_count,
        positive=Buckets(b.offset, b.bucket_counts),
        negative=Buckets(0, []),
        flags=0,
        min=b.min,
        max=b.max,
    )


class _Capture(logging.Handler):
    """Keeps the exporter library's messages of the push under way, for perftop's own one-line reports."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.messages) < 20:
            self.messages.append(record.getMessage())


class OtlpPusher:
    """Collects every `interval_s` and pushes the newest collection to `endpoint`, each in its own thread."""

    def __init__(
        self, collector: HostCollector, endpoint: str, interval_s: float = DEFAULT_INTERVAL_S
    ) -> None:
        """OtlpUnavailable when the opentelemetry packages are not installed."""
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        except ImportError as exc:
            raise OtlpUnavailable(
                f"--otlp needs opentelemetry-sdk and opentelemetry-exporter-otlp-proto-http ({exc.name} is "
                "missing): pip install 'perftop[otlp]'"
            ) from None
        self.collector = collector
        self.endpoint = endpoint
        self.interval_s = interval_s
        self.translator = Translator(socket.gethostname(), time.time())
        self.stats = PushStats()
        from opentelemetry.exporter.otlp.proto.http import Compression

        configured = any(os.environ.get(f"OTEL_EXPORTER_OTLP{kind}_COMPRESSION") for kind in ("", "_METRICS"))
        self._exporter: OTLPMetricExporter = OTLPMetricExporter(
            endpoint=endpoint,
            timeout=max(MIN_TIMEOUT_S, min(MAX_TIMEOUT_S, interval_s)),
            # gzip unless the environment says otherwise: a push of 2000 timings is 1.1 MB raw.
            compression=None if configured else Compression.Gzip,
        )
        self._capture = _Capture()
        library_log = logging.getLogger("opentelemetry")
        library_log.addHandler(self._capture)
        library_log.propagate = False
        self._cond = threading.Condition()
        self._pending: MetricsData | None = None
        self._retry_at = 0.0
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._collect_loop, name="perftop-otlp-collect", daemon=True),
            threading.Thread(target=self._push_loop, name="perftop-otlp-push", daemon=True),
        ]
        self._noted: set[str] = set()
        collector.extra_families.append(self.families)

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Stop both threads; a push under way is cut short (the exporter stops retrying)."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        self._exporter.shutdown()
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(timeout=MAX_TIMEOUT_S + 5)

    def wait(self) -> None:
        """Block until stopped (the command's main thread, when it serves no scrape endpoint)."""
        while not self._stopping.wait(3600):
            pass

    # -- collecting --------------------------------------------------------------------------------------

    def collect_once(self) -> MetricsData:
        """Collect now and translate; the collection counts towards `perftop_export_otlp_collections`."""
        with self._cond:
            self.stats.collections += 1
        agent_stats: dict[int, dict[str, Any]] = {}
        families = self.collector.collect(agent_stats=agent_stats)
        return self.translator.translate(families, agent_stats, time.time())

    def families(self) -> list[Metric]:
        """The pusher's own counters, for every collection of the HostCollector (pushed, and scraped too
        when `--listen` serves the same collector)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._cond:
            s = PushStats(**vars(self.stats))
        out: list[Metric] = []
        for name, doc, value in (
            ("perftop_export_otlp_collections", "Collections made for OTLP pushes", s.collections),
            ("perftop_export_otlp_pushes", "OTLP pushes the receiver accepted", s.pushes),
            ("perftop_export_otlp_failures", "OTLP pushes that failed (then backed off)", s.failures),
            ("perftop_export_otlp_skipped", "Collections replaced by a newer one unpushed", s.skipped),
        ):
            out.append(CounterMetricFamily(name, doc, value=float(value)))
        out.append(
            GaugeMetricFamily(
                "perftop_export_otlp_backoff_seconds",
                "Wait before the next OTLP push (0: pushes succeed)",
                value=s.backoff_s,
                unit="seconds",
            )
        )
        return out

    def _collect_loop(self) -> None:
        due = time.monotonic()
        while not self._stopping.is_set():
            try:
                data = self.collect_once()
            except Exception as exc:  # one line per distinct failure: the next collection may succeed
                self._note(f"collecting for OTLP failed: {type(exc).__name__}: {exc}")
            else:
                with self._cond:
                    if self._pending is not None:
                        self.stats.skipped += 1
                    self._pending = data
                    self._cond.notify_all()
            due += self.interval_s
            now = time.monotonic()
            if due < now:  # a collection that took longer than the interval: no burst to catch up
                due = now + self.interval_s
            self._stopping.wait(due - now)

    # -- pushing -----------------------------------------------------------------------------------------

    def _push_loop(self) -> None:
        from opentelemetry.sdk.metrics.export import MetricExportResult

        while True:
            with self._cond:
                while not self._stopping.is_set() and (
                    self._pending is None or time.monotonic() < self._retry_at
                ):
                    wait = self._retry_at - time.monotonic() if self._pending is not None else None
                    self._cond.wait(wait)
                if self._stopping.is_set():
                    return
                data, self._pending = self._pending, None
            assert data is not None
            self._capture.messages.clear()
            try:
                ok = self._exporter.export(data) == MetricExportResult.SUCCESS
            except Exception as exc:  # the library reports failures as a result; anything else is one too
                self._capture.messages.append(f"{type(exc).__name__}: {exc}")
                ok = False
            self._after_push(ok, failure_reason(self._capture.messages))

    def _after_push(self, ok: bool, reason: str) -> None:
        """Count the push; on failure, back off (the interval, doubled per failure in a row, up to the
        cap). One line when pushes start failing, at each longer wait, and when they work again."""
        with self._cond:
            s = self.stats
            streak = s.consecutive_failures
            previous = s.backoff_s
            if ok:
                s.pushes += 1
                s.consecutive_failures = 0
                s.backoff_s = 0.0
                self._retry_at = 0.0
            else:
                s.failures += 1
                s.consecutive_failures += 1
                s.backoff_s = min(BACKOFF_CAP_S, self.interval_s * 2.0 ** min(s.consecutive_failures - 1, 30))
                self._retry_at = time.monotonic() + s.backoff_s
            failures, backoff = s.failures, s.backoff_s
        if ok and streak:
            say(f"export: OTLP push to {self.endpoint} works again after {streak} failed pushes")
        elif not ok and backoff != previous:
            say(
                f"export: OTLP push to {self.endpoint} failed ({reason}); next try in {backoff:g} s "
                f"(failures so far: {failures})"
            )

    def _note(self, message: str) -> None:
        if message not in self._noted and len(self._noted) < 100:
            self._noted.add(message)
            say(f"export: {message}")


def failure_reason(messages: list[str]) -> str:
    """Why a push failed, from the exporter library's log messages during it: the HTTP status or the
    connection error it retried on, else its last word; at most MAX_REASON characters."""
    reason = messages[-1] if messages else "no reason given"
    for message in messages:
        transient = re.match(r"Transient error (.*) encountered while exporting", message, re.S)
        final = re.match(r"Failed to export \w+ batch code: (\S+), reason: (.*)", message, re.S)
        if transient:
            reason = transient.group(1)
            break
        if final:
            reason = f"HTTP {final.group(1)}: {final.group(2)}"
            break
    errno = re.search(r"\[Errno -?\d+\] [^'\")]*", reason)  # a connection error's gist, out of urllib3's
    if errno:
        reason = errno.group(0)
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."
