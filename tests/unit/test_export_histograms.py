"""The exported histogram shapes: the classic ladder, the native buckets (checked against a quantile
computed as PromQL computes it and against exact quantiles), and the protobuf writer (decoded with
Google's protobuf library against the `io.prometheus.client` schema)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.samples import BucketSpan, NativeHistogram, Sample

from perftop.export import protobuf
from perftop.export.histograms import (
    BASE,
    NATIVE_ERROR,
    SCHEMA,
    ladder,
    native_buckets,
    native_index,
)
from perftop.export.prometheus.families import digest_sketch
from perftop.export.prometheus.server import choose_encoder
from perftop.wire.sketch import ALPHA, GAMMA, Sketch, bucket_value

# -- the classic ladder ----------------------------------------------------------------------------------


@pytest.mark.parametrize("per_decade", [1, 3, 10, 40])
def test_ladder_is_log_spaced_from_100_us_to_100_s(per_decade: int) -> None:
    lad = ladder(per_decade)
    assert lad.bounds[0] == 1e-4 and lad.bounds[-1] == 100.0
    assert len(lad.bounds) == 6 * per_decade + 1
    ratios = [b / a for a, b in zip(lad.bounds, lad.bounds[1:], strict=False)]
    step = 10 ** (1 / per_decade)
    assert all(abs(r / step - 1) < 0.01 for r in ratios), ratios
    assert lad.labels[-1] == "+Inf" and len(set(lad.labels)) == len(lad.labels)
    assert lad.series == len(lad.bounds) + 3


def test_ladder_thresholds_never_overstate_a_bucket() -> None:
    lad = ladder(10)
    for bound, i in zip(lad.bounds, lad.thresholds, strict=True):
        assert GAMMA**i <= bound * 1e9 < GAMMA ** (i + 1)


@pytest.mark.parametrize("per_decade", [0, 41])
def test_ladder_refuses_resolutions_out_of_range(per_decade: int) -> None:
    with pytest.raises(ValueError):
        ladder(per_decade)


# -- native buckets --------------------------------------------------------------------------------------


def expand(spans: list[tuple[int, int]], deltas: list[int]) -> dict[int, int]:
    """Native bucket index -> count, as Prometheus reads spans and deltas."""
    out: dict[int, int] = {}
    index, count, k = 0, 0, 0
    for n, (offset, length) in enumerate(spans):
        index = offset if n == 0 else index + offset
        for _ in range(length):
            count += deltas[k]
            k += 1
            if count:
                out[index] = count
            index += 1
    assert k == len(deltas)
    return out


def promql_quantile(q: float, zero: int, buckets: dict[int, int]) -> float:
    """PromQL's histogram_quantile() over a native histogram: linear inside the bucket holding rank q * n."""
    total = zero + sum(buckets.values())
    rank = q * total
    seen = zero
    if rank <= zero:
        return 0.0
    for k in sorted(buckets):
        n = buckets[k]
        if seen + n >= rank:
            lower, upper = BASE ** (k - 1), BASE**k
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
    raise AssertionError("rank beyond the buckets")


def test_schema_6_is_the_smallest_with_promql_within_2_percent() -> None:
    assert SCHEMA == 6 and BASE == 2 ** (1 / 64)
    assert NATIVE_ERROR < 0.02
    assert 2 ** (1 / 32) * (1 + ALPHA) - 1 > 0.02  # schema 5
    assert BASE < GAMMA  # two sketch buckets never share a native bucket


def test_each_sketch_bucket_goes_whole_to_the_native_bucket_holding_its_representative() -> None:
    for i in range(-3000, 3000, 7):
        k = native_index(i)
        r = bucket_value(i) / 1e9
        assert BASE ** (k - 1) < r * (1 + 1e-12) and r <= BASE**k * (1 + 1e-12)
        assert native_index(i + 1) > k


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    median_ms=st.floats(0.01, 5000.0),
    sigma=st.floats(0.05, 2.5),
    zeros=st.integers(0, 30),
    n=st.integers(1, 3000),
)
def test_native_histogram_quantiles_are_within_the_stated_bound(
    seed: int, median_ms: float, sigma: float, zeros: int, n: int
) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(math.log(median_ms * 1e6), sigma) for _ in range(n)] + [0.0] * zeros
    sketch = Sketch()
    for v in values:
        sketch.add(v)
    d = digest_sketch(sketch.to_dict(), native=True)
    buckets = expand(d.native_spans, d.native_deltas)
    assert sorted(buckets.values()) == sorted(sketch.bins.values())
    assert d.zero == zeros
    ordered = sorted(values)
    for q in (0.01, 0.5, 0.9, 0.99, 0.999):
        rank = q * len(ordered)
        estimate = promql_quantile(q, zeros, buckets)
        # PromQL's rank q * n lies between two order statistics; its answer is within the bound of one
        # of the values around it.
        near = [ordered[max(math.ceil(rank) - 1, 0)], ordered[min(math.ceil(rank), len(ordered) - 1)]]
        if rank <= zeros:
            assert estimate == 0.0
            continue
        near = [v / 1e9 for v in near if v > 0]
        low, high = min(near) * (1 - NATIVE_ERROR), max(near) * (1 + NATIVE_ERROR)
        assert low * (1 - 1e-9) <= estimate <= high * (1 + 1e-9), (q, estimate, near)


def test_spans_fill_short_gaps_and_start_new_spans_after_long_ones() -> None:
    # Sketch buckets 0 and 1 are 1.48 native buckets apart: next to each other or one empty between.
    spans, deltas = native_buckets([0, 1, 2, 100], [5, 3, 3, 1])
    assert len(spans) == 2
    assert expand(spans, deltas) == {
        native_index(0): 5,
        native_index(1): 3,
        native_index(2): 3,
        native_index(100): 1,
    }
    assert native_buckets([], []) == ([], [])


# -- the protobuf writer ---------------------------------------------------------------------------------


def _schema() -> dict[str, Any]:
    """Message classes of `io.prometheus.client` as Prometheus' prompb/io/prometheus/client/metrics.proto
    declares them (the fields perftop uses and their neighbours), built at run time."""
    f = descriptor_pb2.FileDescriptorProto(
        name="perftop_test_prometheus_client.proto", package="io.prometheus.client", syntax="proto3"
    )
    fd = descriptor_pb2.FieldDescriptorProto
    enum = f.enum_type.add(name="MetricType")
    for name, number in (("COUNTER", 0), ("GAUGE", 1), ("SUMMARY", 2), ("UNTYPED", 3), ("HISTOGRAM", 4)):
        enum.value.add(name=name, number=number)
    types = {
        "string": fd.TYPE_STRING,
        "double": fd.TYPE_DOUBLE,
        "uint64": fd.TYPE_UINT64,
        "uint32": fd.TYPE_UINT32,
        "sint32": fd.TYPE_SINT32,
        "sint64": fd.TYPE_SINT64,
        "int64": fd.TYPE_INT64,
    }
    messages: dict[str, list[tuple[str, int, str, bool]]] = {
        "LabelPair": [("name", 1, "string", False), ("value", 2, "string", False)],
        "Gauge": [("value", 1, "double", False)],
        "Counter": [("value", 1, "double", False)],
        "Quantile": [("quantile", 1, "double", False), ("value", 2, "double", False)],
        "Summary": [
            ("sample_count", 1, "uint64", False),
            ("sample_sum", 2, "double", False),
            ("quantile", 3, "Quantile", True),
        ],
        "Untyped": [("value", 1, "double", False)],
        "Bucket": [
            ("cumulative_count", 1, "uint64", False),
            ("upper_bound", 2, "double", False),
            ("cumulative_count_float", 4, "double", False),
        ],
        "BucketSpan": [("offset", 1, "sint32", False), ("length", 2, "uint32", False)],
        "Histogram": [
            ("sample_count", 1, "uint64", False),
            ("sample_sum", 2, "double", False),
            ("bucket", 3, "Bucket", True),
            ("sample_count_float", 4, "double", False),
            ("schema", 5, "sint32", False),
            ("zero_threshold", 6, "double", False),
            ("zero_count", 7, "uint64", False),
            ("zero_count_float", 8, "double", False),
            ("negative_span", 9, "BucketSpan", True),
            ("negative_delta", 10, "sint64", True),
            ("positive_span", 12, "BucketSpan", True),
            ("positive_delta", 13, "sint64", True),
        ],
        "Metric": [
            ("label", 1, "LabelPair", True),
            ("gauge", 2, "Gauge", False),
            ("counter", 3, "Counter", False),
            ("summary", 4, "Summary", False),
            ("untyped", 5, "Untyped", False),
            ("timestamp_ms", 6, "int64", False),
            ("histogram", 7, "Histogram", False),
        ],
        "MetricFamily": [
            ("name", 1, "string", False),
            ("help", 2, "string", False),
            ("type", 3, "MetricType", False),
            ("metric", 4, "Metric", True),
        ],
    }
    for name, fields in messages.items():
        m = f.message_type.add(name=name)
        for field, number, kind, repeated in fields:
            spec = m.field.add(
                name=field,
                number=number,
                label=fd.LABEL_REPEATED if repeated else fd.LABEL_OPTIONAL,
            )
            if kind in types:
                spec.type = types[kind]
            elif kind == "MetricType":
                spec.type, spec.type_name = fd.TYPE_ENUM, ".io.prometheus.client.MetricType"
            else:
                spec.type, spec.type_name = fd.TYPE_MESSAGE, f".io.prometheus.client.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"io.prometheus.client.{name}"))
        for name in messages
    }


def decode_delimited(body: bytes) -> list[Any]:
    """The MetricFamily messages of a delimited body (each preceded by its length as a varint)."""
    family = _schema()["MetricFamily"]
    out = []
    pos = 0
    while pos < len(body):
        length = shift = 0
        while True:
            byte = body[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        message = family()
        message.ParseFromString(body[pos : pos + length])
        out.append(message)
        pos += length
    assert pos == len(body)
    return out


def labels_of(metric: Any) -> dict[str, str]:
    return {pair.name: pair.value for pair in metric.label}


def test_protobuf_writer_round_trips_through_googles_decoder() -> None:
    gauge = GaugeMetricFamily("t_gauge", "a gauge", labels=["app"])
    gauge.add_metric(["shop"], 2.5)
    gauge.add_metric(['\u00e9t\u00e9 "x"\n'], -1e300)
    counter = CounterMetricFamily("t_calls", "a counter", labels=["app"])
    counter.add_metric(["shop"], 7.0)
    info = InfoMetricFamily("t_agent", "an info", labels=["app"])
    info.add_metric(["shop"], {"version": "1.2"})
    summary = SummaryMetricFamily("t_seconds", "a summary", labels=["metric"])
    summary.samples.append(Sample("t_seconds", {"metric": "m", "quantile": "0.99"}, 0.25))
    summary.add_metric(["m"], 40, 3.5)
    classic = HistogramMetricFamily("t_hist_seconds", "a histogram", labels=["metric"])
    classic.add_metric(["m"], [("0.1", 3.0), ("1", 9.0), ("+Inf", 10.0)], 4.0)
    native = HistogramMetricFamily("t_native_seconds", "a native histogram", labels=["metric"])
    spans, deltas = native_buckets([-800, -799, -797, 10], [4, 1, 6, 2])
    native.samples.append(
        Sample(
            "t_native_seconds",
            {"metric": "m"},
            14.0,
            native_histogram=NativeHistogram(
                14.0,
                1.5,
                SCHEMA,
                2.0**-128,
                1.0,
                pos_spans=[BucketSpan(o, n) for o, n in spans],
                pos_deltas=deltas,
            ),
        )
    )
    families = {
        fam.name: fam
        for fam in decode_delimited(protobuf.encode([gauge, counter, info, summary, classic, native]))
    }
    assert list(families) == [
        "t_gauge",
        "t_calls_total",
        "t_agent_info",
        "t_seconds",
        "t_hist_seconds",
        "t_native_seconds",
    ]
    g = families["t_gauge"]
    assert (g.type, g.help) == (1, "a gauge")
    assert [(labels_of(m), m.gauge.value) for m in g.metric] == [
        ({"app": "shop"}, 2.5),
        ({"app": '\u00e9t\u00e9 "x"\n'}, -1e300),
    ]
    c = families["t_calls_total"]
    assert c.type == 0 and c.metric[0].counter.value == 7.0
    i = families["t_agent_info"]
    assert i.type == 1 and labels_of(i.metric[0]) == {"app": "shop", "version": "1.2"}
    assert i.metric[0].gauge.value == 1.0
    s = families["t_seconds"].metric[0]
    assert families["t_seconds"].type == 2 and labels_of(s) == {"metric": "m"}
    assert (s.summary.sample_count, s.summary.sample_sum) == (40, 3.5)
    assert [(q.quantile, q.value) for q in s.summary.quantile] == [(0.99, 0.25)]
    h = families["t_hist_seconds"].metric[0].histogram
    assert families["t_hist_seconds"].type == 4
    assert (h.sample_count, h.sample_sum) == (10, 4.0)
    assert [(b.upper_bound, b.cumulative_count) for b in h.bucket] == [(0.1, 3), (1.0, 9)]
    assert not h.positive_span
    n = families["t_native_seconds"].metric[0].histogram
    assert (n.sample_count, n.sample_sum, n.schema, n.zero_count) == (14, 1.5, SCHEMA, 1)
    assert n.zero_threshold == 2.0**-128 and not n.bucket
    decoded_spans = [(span.offset, span.length) for span in n.positive_span]
    assert expand(decoded_spans, list(n.positive_delta)) == expand(spans, deltas)
    assert any(d < 0 for d in n.positive_delta)  # zigzag: negative deltas survive


def test_protobuf_is_chosen_only_when_the_scraper_asks_for_it() -> None:
    prometheus_native = (
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,"
        "application/openmetrics-text;version=1.0.0;q=0.8,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    assert choose_encoder(prometheus_native)[1] == protobuf.CONTENT_TYPE
    refused = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;q=0,text/plain"
    assert choose_encoder(refused)[1].startswith("text/plain")
    other_proto = "application/vnd.google.protobuf;proto=other.Thing;encoding=delimited"
    assert choose_encoder(other_proto)[1].startswith("text/plain")
    om2 = choose_encoder("application/openmetrics-text; version=2.0.0")[1]
    assert om2.startswith("application/openmetrics-text; version=2.0.0")
    assert choose_encoder("")[1].startswith("text/plain; version=0.0.4")
