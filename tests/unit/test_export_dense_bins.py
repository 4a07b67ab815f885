"""Dense sketch bins (protocol.bins_form), what `perftop export` asks its agents for: the exporter's digest
and the OTLP mapping read them exactly as the pairs of `Sketch.to_dict`, and refuse malformed ones."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perftop.export.histograms import ladder
from perftop.export.otlp import exponential_buckets
from perftop.export.prometheus.families import QUANTILES, digest_sketch
from perftop.wire.protocol import BINS_DENSE, BINS_PAIRS, ProtocolError, bins_form
from perftop.wire.sketch import MAX_INDEX, Sketch, SketchError


def dense(data: dict[str, Any]) -> dict[str, Any]:
    """`Sketch.to_dict` output with dense bins, as the agent answers `"bins": "dense"`."""
    out = {k: v for k, v in data.items() if k != "bins"}
    bins = data["bins"]
    out["lo"] = bins[0][0] if bins else 0
    out["counts"] = [0] * (bins[-1][0] - out["lo"] + 1) if bins else []
    for index, n in bins:
        out["counts"][index - out["lo"]] = n
    return out


def sketch_of(values: list[float]) -> dict[str, Any]:
    sketch = Sketch()
    for value in values:
        sketch.add(value)
    return sketch.to_dict()


latencies = st.lists(
    st.one_of(st.just(0.0), st.floats(min_value=1e3, max_value=1e12, allow_nan=False)), max_size=300
)


@settings(max_examples=200, deadline=None)
@given(latencies, st.sampled_from([1, 5, 10, 20]))
def test_a_dense_sketch_digests_as_its_pairs(values: list[float], per_decade: int) -> None:
    pairs = sketch_of(values)
    lad = ladder(per_decade)
    a, b = digest_sketch(pairs, lad, native=True), digest_sketch(dense(pairs), lad, native=True)
    assert a.buckets == b.buckets and [type(n) for n in a.buckets] == [type(n) for n in b.buckets]
    assert (a.count, a.errors, a.sum_s, a.zero) == (b.count, b.errors, b.sum_s, b.zero)
    assert a.quantiles == b.quantiles or all(map(math.isnan, a.quantiles + b.quantiles))
    if values:  # the sketch's own quantiles, to the bit
        assert b.quantiles == [v / 1e9 for v in Sketch.from_dict(pairs).quantiles(QUANTILES) if v is not None]
    assert (a.native_spans, a.native_deltas) == (b.native_spans, b.native_deltas)


@settings(max_examples=200, deadline=None)
@given(latencies, st.sampled_from([1e-6, 1.0]))
def test_a_dense_sketch_maps_to_otlp_as_its_pairs(values: list[float], factor: float) -> None:
    pairs = sketch_of(values)
    assert exponential_buckets(dense(pairs), factor) == exponential_buckets(pairs, factor)


def test_gaps_between_populated_bins_are_zeros() -> None:
    data = sketch_of([1e6, 1e9])
    assert len(data["bins"]) == 2
    d = dense(data)
    assert d["counts"][0] == d["counts"][-1] == 1 and sum(d["counts"]) == 2
    assert digest_sketch(d).buckets == digest_sketch(data).buckets


GOOD = dense(sketch_of([1e6, 2e6, 5e6]))


@pytest.mark.parametrize(
    "change",
    [
        {"lo": "1"},
        {"lo": 1.0},
        {"lo": True},
        {"lo": None},
        {"counts": "abc"},
        {"counts": None},
        {"counts": [1, "x", 1]},
        {"counts": [1, -1, 3]},
        {"counts": [1, 1]},
        {"count": 4},
    ],
)
def test_malformed_dense_bins_are_refused(change: dict[str, Any]) -> None:
    bad = {**GOOD, **change}
    with pytest.raises((ValueError, TypeError, KeyError)):
        digest_sketch(bad, native=True)
    with pytest.raises(SketchError):
        exponential_buckets(bad)


@pytest.mark.parametrize("lo", [MAX_INDEX, -MAX_INDEX - 1, 10**400, -(10**400)])
def test_bins_beyond_the_float_range_are_refused_or_clamped(lo: int) -> None:
    """The digest refuses them; the OTLP mapping clamps every bin to the sketch's [min, max] (as pairs)."""
    bad = {**GOOD, "lo": lo}
    with pytest.raises(ValueError):
        digest_sketch(bad, native=True)
    pairs = {k: v for k, v in bad.items() if k not in ("lo", "counts")}
    pairs["bins"] = [[lo + k, n] for k, n in enumerate(GOOD["counts"]) if n]
    for data in (bad, pairs):
        try:
            b = exponential_buckets(data)
        except (SketchError, OverflowError):
            continue
        assert b is not None and sum(b.bucket_counts) + b.zero_count == b.count


def test_otlp_clamps_the_bins_of_a_sketch_whose_max_is_under_them() -> None:
    data = {**sketch_of([1e6, 2e6, 5e6, 1e9]), "max": 1e6}
    b = exponential_buckets(data)
    assert b is not None and len(b.bucket_counts) == 1 and b.bucket_counts[0] == 4


def test_a_sketch_without_bins_or_counts_is_refused() -> None:
    bad = {k: v for k, v in GOOD.items() if k != "counts"}
    with pytest.raises(KeyError):
        digest_sketch(bad)
    with pytest.raises(SketchError):
        exponential_buckets(bad)


def test_bins_form_is_pairs_unless_dense_is_asked() -> None:
    assert bins_form(None) == bins_form(BINS_PAIRS) == BINS_PAIRS
    assert bins_form(BINS_DENSE) == BINS_DENSE
    for value in ("Dense", "", 1, True, [], {}, ["dense"], 1.5):
        with pytest.raises(ProtocolError, match="'bins' must be"):
            bins_form(value)
