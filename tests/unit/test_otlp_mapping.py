"""The sketch -> OTLP exponential histogram mapping and the `--otlp` URL, against their definitions: the
OTLP specification's bucket bounds (computed here with exact rationals) and known values."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perftop.export.otlp import (
    SCALE,
    exponential_buckets,
    exponential_index,
    failure_reason,
    metrics_endpoint,
)
from perftop.wire.sketch import ALPHA, Sketch


def in_bucket(value: float, index: int) -> bool:
    """base**index < value <= base**(index+1), base = 2**(2**-SCALE), decided exactly: value**(2**SCALE)
    against 2**index (both sides raised to the power 2**SCALE, which keeps the order)."""
    v = Fraction(value) ** (2**SCALE)
    return Fraction(2) ** index < v <= Fraction(2) ** (index + 1)


@given(st.floats(min_value=1e-9, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_every_value_gets_the_bucket_of_the_specification(value: float) -> None:
    index = exponential_index(value)
    # Within a float's rounding of a bound, either neighbour is as good as the other.
    assert (
        in_bucket(value, index)
        or in_bucket(value * (1 + 1e-12), index)
        or in_bucket(value * (1 - 1e-12), index)
    )


def test_powers_of_two_are_the_upper_bound_of_their_bucket() -> None:
    assert exponential_index(1.0) == -1
    assert exponential_index(2.0) == 2**SCALE - 1
    assert exponential_index(0.5) == -(2**SCALE) - 1


def test_a_sketch_becomes_buckets_with_its_exact_count_sum_and_extremes() -> None:
    sketch = Sketch()
    values = [0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0]
    for v in values:
        sketch.add(v)
    b = exponential_buckets(sketch.to_dict())
    assert b is not None
    assert (b.count, b.zero_count, b.sum, b.min, b.max) == (13, 2, sum(values), 0.0, 55.0)
    assert sum(b.bucket_counts) == 11
    assert b.bucket_counts[0] > 0 and b.bucket_counts[-1] > 0  # dense, no padding at the ends
    # Each positive value sits in its own bucket or, within the sketch's accuracy of a bound, a neighbour.
    for v in set(values) - {0.0}:
        k = exponential_index(v) - b.offset
        near = b.bucket_counts[max(0, k - 1) : k + 2]
        assert sum(near) >= values.count(v)
    # The representative of 1.0's sketch bin lies in 1.0's own bucket: all three are counted there.
    assert b.bucket_counts[exponential_index(1.0) - b.offset] == 3


def test_seconds_from_nanoseconds_and_an_empty_sketch() -> None:
    sketch = Sketch()
    for ns in (1_000_000.0, 2_000_000.0, 4_000_000.0):  # 1, 2 and 4 ms
        sketch.add(ns)
    b = exponential_buckets(sketch.to_dict(), 1e-9)
    assert b is not None
    assert b.sum == pytest.approx(0.007) and (b.min, b.max) == (pytest.approx(0.001), pytest.approx(0.004))
    values = [b.offset + k for k, n in enumerate(b.bucket_counts) for _ in range(n)]
    expected = [exponential_index(s) for s in (0.001, 0.002, 0.004)]
    assert all(abs(got - want) <= 1 for got, want in zip(values, expected, strict=True))
    # Each bucket's log-midpoint is within the bucket's half-width plus the sketch's accuracy of the value.
    base = 2.0 ** (2.0**-SCALE)
    for index, s in zip(values, (0.001, 0.002, 0.004), strict=True):
        mid = 2 * base ** (index + 1) / (1 + base)
        assert math.isclose(mid, s, rel_tol=(base - 1) / (base + 1) + ALPHA)
    assert exponential_buckets(Sketch().to_dict()) is None


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("http://collector:4318", "http://collector:4318/v1/metrics"),
        ("http://collector:4318/", "http://collector:4318/v1/metrics"),
        ("https://otel.example/prefix", "https://otel.example/prefix/v1/metrics"),
        ("http://127.0.0.1:4318/v1/metrics", "http://127.0.0.1:4318/v1/metrics"),
        ("http://[::1]:4318", "http://[::1]:4318/v1/metrics"),
    ],
)
def test_endpoint_of_a_url(url: str, endpoint: str) -> None:
    assert metrics_endpoint(url) == endpoint


@pytest.mark.parametrize("url", ["collector:4318", "ftp://h", "http://", "http://h:70000", "http://h/?q=1"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        metrics_endpoint(url)


def test_failure_reasons_are_short_and_to_the_point() -> None:
    assert (
        failure_reason(["Failed to export metrics batch code: 400, reason: Bad Request"])
        == "HTTP 400: Bad Request"
    )
    transient = (
        "Transient error Service Unavailable encountered while exporting metrics batch, retrying in 1.00s."
    )
    assert (
        failure_reason([transient, "Failed to export metrics batch due to timeout"]) == "Service Unavailable"
    )
    refused = (
        "Transient error HTTPConnectionPool(host='h', port=1): Max retries exceeded (Caused by "
        'NewConnectionError("Failed to establish a new connection: [Errno 111] Connection refused")) '
        "encountered while exporting metrics batch, retrying in 1.00s."
    )
    assert failure_reason([refused]) == "[Errno 111] Connection refused"
    assert len(failure_reason(["x" * 1000])) == 200
    assert failure_reason([]) == "no reason given"
