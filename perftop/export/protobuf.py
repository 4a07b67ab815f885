"""The Prometheus protobuf exposition (`io.prometheus.client.MetricFamily`, length-delimited): the one
format in which Prometheus 2.40+ ingests native histograms (with `--enable-feature=native-histograms` it
asks for it first in its Accept header).

A small writer for just the messages perftop sends, from prometheus_client's metric families, with no
protobuf runtime: field numbers and types are those of Prometheus' own copy of the schema,
`prompb/io/prometheus/client/metrics.proto` (MetricFamily 1 name, 2 help, 3 type, 4 metric; Metric
1 label, 2 gauge, 3 counter, 4 summary, 5 untyped, 7 histogram; Histogram 1 sample_count, 2 sample_sum,
3 bucket, 5 schema (sint32), 6 zero_threshold, 7 zero_count, 12 positive_span, 13 positive_delta
(sint64, packed); BucketSpan 1 offset (sint32), 2 length; Bucket 1 cumulative_count, 2 upper_bound;
Summary 1 sample_count, 2 sample_sum, 3 quantile; Quantile 1 quantile, 2 value; LabelPair 1 name,
2 value; Gauge/Counter/Untyped 1 value). tests/unit/test_export_protobuf.py decodes the output with
Google's protobuf library against that schema.

Names follow Prometheus' protobuf conventions: a counter family is named with its `_total`, an info
family becomes a gauge `<name>_info`, a summary or histogram family keeps its base name (its series get
`_sum`, `_count`, `_bucket` from Prometheus).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import chain
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.core import Metric

CONTENT_TYPE = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
MEDIA_TYPE = "application/vnd.google.protobuf"

COUNTER, GAUGE, SUMMARY, UNTYPED, HISTOGRAM = 0, 1, 2, 3, 4
_pack_double = struct.Struct("<d").pack


def _varint_of(value: int) -> bytes:
    """An unsigned varint (negative int64 values as their 64-bit two's complement, as protobuf has it)."""
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [_varint_of(i) for i in range(1 << 14)]
"""The varints of 0 .. 16383 (one or two bytes), made once: most counts, lengths and deltas."""


def _varint(value: int) -> bytes:
    return _SMALL[value] if 0 <= value < 16384 else _varint_of(value)


def _zigzag(value: int) -> int:
    """sint32/sint64's mapping of signed to unsigned: 0, -1, 1, -2... -> 0, 1, 2, 3..."""
    return (value << 1) ^ (value >> 63)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def _string_field(field: int, text: str) -> bytes:
    return _bytes_field(field, text.encode("utf-8", "replace"))


def _double_field(field: int, value: float) -> bytes:
    return _key(field, 1) + _pack_double(value)


def _uint_field(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _count(value: float) -> int:
    """A count for a uint64 field: counts are whole, and a NaN or negative one (never from perftop) 0."""
    return int(value) if math.isfinite(value) and value > 0 else 0


@lru_cache(maxsize=65536)
def _label_pair(name: str, value: str) -> bytes:
    """A Metric's `label` field (a LabelPair): the same few thousand pairs come back every scrape."""
    return _bytes_field(1, _string_field(1, name) + _string_field(2, value))


@lru_cache(maxsize=4096)
def _upper_bound(le: str) -> bytes:
    """A Bucket's `upper_bound` field for an `le` label: the ladder's few dozen bounds, made once."""
    return _double_field(2, float(le))


def _labels(labels: Iterable[tuple[str, str]]) -> bytes:
    return b"".join([_label_pair(name, value) for name, value in labels])


def _family(name: str, help_text: str, kind: int, metrics: Iterable[bytes]) -> bytes:
    body = b"".join(
        [_string_field(1, name), _string_field(2, help_text), _uint_field(3, kind)]
        + [_bytes_field(4, m) for m in metrics]
    )
    return _varint(len(body)) + body


def _grouped(samples: Iterable[Any], leave_out: str) -> dict[tuple[tuple[str, str], ...], list[Any]]:
    """The samples of one family by series (their labels less `leave_out`), in order of appearance."""
    out: dict[tuple[tuple[str, str], ...], list[Any]] = {}
    for s in samples:
        labels = s.labels
        key = (
            tuple(item for item in labels.items() if item[0] != leave_out)
            if leave_out in labels
            else (tuple(labels.items()))
        )
        series = out.get(key)
        if series is None:
            out[key] = [s]
        else:
            series.append(s)
    return out


def _summary(base: str, series: list[Any]) -> bytes:
    count = total = 0.0
    quantiles = []
    for s in series:
        if s.name == base:
            q = _double_field(1, float(s.labels["quantile"])) + _double_field(2, s.value)
            quantiles.append(_bytes_field(3, q))
        elif s.name == base + "_count":
            count = s.value
        elif s.name == base + "_sum":
            total = s.value
    return _uint_field(1, _count(count)) + _double_field(2, total) + b"".join(quantiles)


def _classic(base: str, series: list[Any]) -> bytes:
    count = total = 0.0
    buckets = []
    bucket_name = base + "_bucket"
    for s in series:
        if s.name == bucket_name:
            le = s.labels["le"]
            if le != "+Inf":  # +Inf is optional: it is the count
                body = b"\x08" + _varint(_count(s.value)) + _upper_bound(le)
                buckets.append(b"\x1a" + _SMALL[len(body)] + body)
        elif s.name == base + "_count":
            count = s.value
        elif s.name == base + "_sum":
            total = s.value
    return _uint_field(1, _count(count)) + _double_field(2, total) + b"".join(buckets)


def _native(h: Any) -> bytes:
    """A Histogram message of a prometheus_client NativeHistogram (positive buckets and zero bucket)."""
    out = [
        _uint_field(1, _count(h.count_value)),
        _double_field(2, h.sum_value),
        _uint_field(5, _zigzag(h.schema)),
        _double_field(6, h.zero_threshold),
        _uint_field(7, _count(h.zero_count)),
    ]
    for span in h.pos_spans or ():
        out.append(_bytes_field(12, _uint_field(1, _zigzag(span.offset)) + _uint_field(2, span.length)))
    if h.pos_deltas:
        out.append(_bytes_field(13, b"".join([_varint(_zigzag(d)) for d in h.pos_deltas])))
    return b"".join(out)


def _metric(labels: Iterable[tuple[str, str]], field: int, payload: bytes) -> bytes:
    return _labels(labels) + _bytes_field(field, payload)


# -- the parts of a family, for families that write themselves (the exporter's timings) ---------------


def label_pairs(labels: Iterable[tuple[str, str]]) -> bytes:
    """A Metric's `label` fields, in the order given."""
    return _labels(labels)


def family_message(name: str, help_text: str, kind: int, metrics: Iterable[bytes]) -> bytes:
    """One delimited MetricFamily of Metric messages (each from `metric_message`)."""
    return _family(name, help_text, kind, metrics)


def metric_message(labels: bytes, field: int, payload: bytes) -> bytes:
    """A Metric: its `label_pairs`, then its value message in `field` (2 gauge, 3 counter, 4 summary,
    5 untyped, 7 histogram)."""
    return labels + _bytes_field(field, payload)


def value_payload(value: float) -> bytes:
    """A Gauge, Counter or Untyped message."""
    return _double_field(1, value)


def summary_payload(count: float, total: float, quantiles: Iterable[float], values: Iterable[float]) -> bytes:
    """A Summary message, as a summary family's samples give it."""
    parts = [_uint_field(1, _count(count)), _double_field(2, total)]
    for q, value in zip(quantiles, values, strict=True):
        parts.append(_bytes_field(3, _double_field(1, q) + _double_field(2, value)))
    return b"".join(parts)


def upper_bounds(les: Iterable[str]) -> list[bytes]:
    """The Bucket `upper_bound` fields of a classic histogram's `le` labels (+Inf left out)."""
    return [_upper_bound(le) for le in les if le != "+Inf"]


class _BucketHeads(dict[float, bytes]):
    """A classic Bucket's bytes up to its upper bound, by cumulative count: its field key and length and
    its `cumulative_count` field (the upper bound's field, always 9 bytes, follows). A host's buckets
    hold a few thousand distinct counts, the same from one scrape to the next."""

    def __missing__(self, count: float) -> bytes:
        if len(self) > 100_000:
            self.clear()
        varint = _varint(_count(count))
        head = self[count] = b"\x1a" + _SMALL[10 + len(varint)] + b"\x08" + varint
        return head


_BUCKET_HEADS = _BucketHeads()


def classic_payload(cumulative: Sequence[float], bounds: Sequence[bytes], total: float) -> bytes:
    """A classic Histogram message: the count (the last of `cumulative`, the +Inf bucket), the sum, and a
    Bucket per bound with its cumulative count."""
    heads = map(_BUCKET_HEADS.__getitem__, cumulative[: len(bounds)])
    buckets = b"".join(chain.from_iterable(zip(heads, bounds, strict=True)))
    return _uint_field(1, _count(cumulative[-1])) + _double_field(2, total) + buckets


class _Deltas(dict[int, bytes]):
    """The sint64 varint of a native bucket delta, by value, made once (deltas are small numbers)."""

    def __missing__(self, delta: int) -> bytes:
        if len(self) > 100_000:
            self.clear()
        varint = self[delta] = _varint(_zigzag(delta))
        return varint


_DELTAS = _Deltas()


class _Spans(dict[tuple[int, int], bytes]):
    """A native histogram's `positive_span` field, by (offset, length), made once."""

    def __missing__(self, span: tuple[int, int]) -> bytes:
        if len(self) > 100_000:
            self.clear()
        offset, length = span
        field = self[span] = _bytes_field(12, _uint_field(1, _zigzag(offset)) + _uint_field(2, length))
        return field


_SPANS = _Spans()


def native_payload(
    count: float,
    total: float,
    schema: int,
    zero_threshold: float,
    zero_count: float,
    spans: Iterable[tuple[int, int]],
    deltas: Sequence[int],
) -> bytes:
    """A native Histogram message (positive buckets and zero bucket)."""
    out = [
        _uint_field(1, _count(count)),
        _double_field(2, total),
        _uint_field(5, _zigzag(schema)),
        _double_field(6, zero_threshold),
        _uint_field(7, _count(zero_count)),
    ]
    out.extend(map(_SPANS.__getitem__, spans))
    if deltas:
        out.append(_bytes_field(13, b"".join(map(_DELTAS.__getitem__, deltas))))
    return b"".join(out)


def encode_family(fam: Metric) -> bytes:
    """One prometheus_client family as delimited MetricFamily messages (empty if it has no samples). A
    family with a `protobuf_family()` method writes itself (the exporter's timings)."""
    direct = getattr(fam, "protobuf_family", None)
    if direct is not None:
        result: bytes = direct()
        return result
    if not fam.samples:
        return b""
    kind = fam.type
    if kind == "counter":
        values = [s for s in fam.samples if s.name == fam.name + "_total"]
        metrics = [_metric(s.labels.items(), 3, _double_field(1, s.value)) for s in values]
        return _family(fam.name + "_total", fam.documentation, COUNTER, metrics)
    if kind in ("gauge", "info", "unknown", "untyped"):
        name = fam.name + "_info" if kind == "info" else fam.name
        field, ptype = (5, UNTYPED) if kind in ("unknown", "untyped") else (2, GAUGE)
        metrics = [_metric(s.labels.items(), field, _double_field(1, s.value)) for s in fam.samples]
        return _family(name, fam.documentation, ptype, metrics)
    if kind == "summary":
        groups = _grouped(fam.samples, "quantile")
        metrics = [_metric(key, 4, _summary(fam.name, series)) for key, series in groups.items()]
        return _family(fam.name, fam.documentation, SUMMARY, metrics)
    if kind == "histogram":
        metrics = []
        for key, series in _grouped(fam.samples, "le").items():
            native = next((s.native_histogram for s in series if s.native_histogram is not None), None)
            payload = _native(native) if native is not None else _classic(fam.name, series)
            metrics.append(_metric(key, 7, payload))
        return _family(fam.name, fam.documentation, HISTOGRAM, metrics)
    # Types perftop does not make (stateset, gaugehistogram...): each sample an untyped series.
    return b"".join(
        _family(
            s.name,
            fam.documentation,
            UNTYPED,
            [_metric(s.labels.items(), 5, _double_field(1, s.value))],
        )
        for s in fam.samples
    )


def encode(families: Iterable[Metric]) -> bytes:
    """Every family, delimited, in order: the body of a protobuf scrape."""
    return b"".join(encode_family(fam) for fam in families)


def accepts(accept: str) -> bool:
    """Whether an Accept header asks for the delimited MetricFamily protobuf (and does not refuse it
    with q=0)."""
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media.lower() != MEDIA_TYPE:
            continue
        options = dict(p.split("=", 1) for p in params if "=" in p)
        if options.get("proto") != "io.prometheus.client.MetricFamily":
            continue
        if options.get("encoding", "delimited") != "delimited":
            continue
        try:
            if float(options.get("q", "1")) <= 0:
                continue
        except ValueError:
            continue
        return True
    return False
