"""The quantile sketch and its sliding windows: accuracy against exact quantiles, merging, bounds, input."""

from __future__ import annotations

import json
import random
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perftop.wire.sketch import ALPHA, MAX_BINS, Sketch, SketchError, Windows

QS = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)


def exact(values: list[float], q: float) -> float:
    """numpy's nearest rank ceil(q * n) (`inverted_cdf`): the definition the sketch follows."""
    return float(np.quantile(np.asarray(values, dtype=float), q, method="inverted_cdf"))


def lognormal(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(13.0, 1.2) for _ in range(n)]  # ~0.4 ms median, in ns


def bimodal(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(2e5, 2e4) if rng.random() < 0.9 else rng.gauss(5e7, 5e6) for _ in range(n)]


def uniform(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(1.0, 1e6) for _ in range(n)]


def assert_accurate(sketch: Sketch, values: list[float]) -> None:
    assert sketch.count == len(values)
    for q, got in zip(QS, sketch.quantiles(QS), strict=True):
        want = exact(values, q)
        assert got is not None
        assert abs(got - want) <= 0.01 * want, f"q={q}: {got} vs exact {want}"
        assert sketch.quantile(q) == got


@pytest.mark.parametrize("make", [lognormal, bimodal, uniform])
def test_quantiles_within_one_percent(make: Any) -> None:
    values = make(50_000, seed=1)
    sketch = Sketch()
    for v in values:
        sketch.add(v)
    assert_accurate(sketch, values)
    assert sketch.min == min(values) and sketch.max == max(values)
    assert sketch.mean == pytest.approx(sum(values) / len(values))


@pytest.mark.parametrize("make", [lognormal, bimodal, uniform])
def test_merged_sketches_are_as_accurate_as_one(make: Any) -> None:
    parts = [make(8_000, seed=s) for s in range(5)]
    merged = Sketch()
    single = Sketch()
    for part in parts:
        sk = Sketch()
        for v in part:
            sk.add(v)
            single.add(v)
        merged.merge(sk)
    everything = [v for part in parts for v in part]
    assert_accurate(merged, everything)
    assert merged.bins == single.bins
    assert merged.count == single.count


def test_add_counts_equals_adding_one_by_one() -> None:
    values = [int(v) for v in lognormal(5_000, seed=3)]
    one = Sketch()
    for v in values:
        one.add(v)
    many = Sketch()
    counts: dict[float, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    many.add_counts(counts)
    assert one.to_dict() == many.to_dict()


def test_zero_and_negative_values_count_in_the_zero_bin() -> None:
    sk = Sketch()
    for v in (0, 0, -5, 10, 20):
        sk.add(v)
    assert sk.zero == 3 and sk.count == 5
    assert sk.quantile(0.0) == -5  # rank 1: the exact min
    assert sk.quantile(0.5) == 0.0  # rank 3 of -5, 0, 0, 10, 20
    assert sk.quantile(1.0) == pytest.approx(20, rel=ALPHA)


def test_bins_are_bounded_whatever_the_range() -> None:
    sk = Sketch()
    values = [10.0**e for e in range(-300, 301)] * 3 + [1.5**k for k in range(1, 1700)]
    for v in values:
        sk.add(v)
    assert len(sk.bins) <= MAX_BINS
    assert len(sk.to_dict()["bins"]) <= MAX_BINS
    # Only the lowest buckets are folded: the quantiles near the top keep their accuracy.
    for q in (0.99, 1.0):
        want = exact(values, q)
        assert abs(sk.quantile(q) - want) <= 0.01 * want  # type: ignore[operator]
    merged = Sketch()
    merged.merge(sk)
    merged.merge(sk)
    assert len(merged.bins) <= MAX_BINS
    assert merged.count == 2 * sk.count


def test_every_quantile_is_accurate_over_the_whole_span_of_timings() -> None:
    # 1 ns to 3 hours in ns: the cap (a span of 1.3e14 between smallest and largest bucket) folds nothing.
    values = [10.0 ** (e / 10) for e in range(0, 140)] * 2 + [7.0, 7.0, 7.0]
    sk = Sketch()
    for v in values:
        sk.add(v)
    for q in (0.0, 0.01, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0):
        want = exact(values, q)
        assert abs(sk.quantile(q) - want) <= 0.01 * want  # type: ignore[operator]


def test_empty_sketch() -> None:
    sk = Sketch()
    assert sk.quantile(0.5) is None
    assert sk.quantiles([0.5, 0.9]) == [None, None]
    assert sk.mean is None
    assert Sketch.from_dict(json.loads(json.dumps(sk.to_dict()))).count == 0
    sk.add(1)
    with pytest.raises(ValueError):
        sk.quantile(2.0)


def test_extreme_buckets_do_not_overflow() -> None:
    sk = Sketch()
    sk.add(sys.float_info.max)
    sk.add(1.7e308)
    sk.add(5e-324)
    assert sk.quantile(1.0) == sys.float_info.max
    assert sk.quantile(0.5) == pytest.approx(1.7e308, rel=ALPHA)
    assert sk.quantile(0.0) == 5e-324
    back = Sketch.from_dict(json.loads(json.dumps(sk.to_dict())))
    assert back.quantiles(QS) == sk.quantiles(QS)


# -- serialization -----------------------------------------------------------------------------------

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, max_size=200), st.integers(min_value=0, max_value=5))
def test_round_trip_through_json(values: list[float], errors: int) -> None:
    sk = Sketch()
    for i, v in enumerate(values):
        sk.add(v, errors=1 if i < errors else 0)
    back = Sketch.from_dict(json.loads(json.dumps(sk.to_dict())))
    assert back.to_dict() == sk.to_dict()
    assert back.quantiles(QS) == sk.quantiles(QS)


def valid_dict() -> dict[str, Any]:
    sk = Sketch()
    for v in (1.0, 2.0, 3.0, 0.0):
        sk.add(v)
    return sk.to_dict()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("alpha", 0.01),
        ("count", -1),
        ("count", 5),
        ("count", True),
        ("count", 4.0),
        ("errors", 9),
        ("sum", "1.0"),
        ("sum", float("nan")),
        ("sum", float("inf")),
        ("sum", 10**400),
        ("min", None),
        ("max", "x"),
        ("min", 100.0),
        ("zero", -1),
        ("bins", {"1": 2}),
        ("bins", [[1, 2, 3]]),
        ("bins", [["1", 1]]),
        ("bins", [[10**9, 3]]),
        ("bins", [[True, 3]]),
        ("bins", [[1, -3]]),
        ("bins", [[0, 1]] * 100_001),
    ],
)
def test_from_dict_rejects_malformed_fields(field: str, value: Any) -> None:
    data = valid_dict()
    data[field] = value
    with pytest.raises(SketchError):
        Sketch.from_dict(data)


@pytest.mark.parametrize("data", [None, [], "sketch", 3, {}, {"alpha": ALPHA}])
def test_from_dict_rejects_non_sketches(data: Any) -> None:
    with pytest.raises(SketchError):
        Sketch.from_dict(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.sampled_from(["alpha", "count", "errors", "sum", "min", "max", "zero", "bins"]), json_values)
def test_from_dict_never_raises_anything_but_sketch_error(field: str, value: Any) -> None:
    data = valid_dict()
    data[field] = value
    try:
        sk = Sketch.from_dict(data)
    except SketchError:
        return
    # Accepted: then it is a consistent sketch.
    assert sk.count == sk.zero + sum(sk.bins.values())
    sk.quantiles(QS)


@given(json_values)
def test_from_dict_of_arbitrary_json(value: Any) -> None:
    with pytest.raises(SketchError):
        Sketch.from_dict(value if not isinstance(value, dict) else {**value, "alpha": "x"})


# -- windows -----------------------------------------------------------------------------------------


def test_windows_with_an_injected_clock() -> None:
    t0 = 1_000_000.0
    w = Windows(started_at=t0)
    w.add(t0 + 0.5, 100)  # second 0
    w.add(t0 + 5.2, 200, n=2)  # second 5
    w.add(t0 + 12.7, 300, n=3, errors=1)  # second 12
    w.add(t0 + 70.0, 400, n=4)  # second 70

    w2 = Windows(started_at=t0)
    w2.add(t0 + 0.5, 100)
    w2.add(t0 + 5.2, 200, n=2)
    w2.add(t0 + 12.7, 300, n=3, errors=1)
    sk, span = w2.window(10, t0 + 12.9)
    assert sk.count == 5  # seconds 3..12: the 200s and the 300s
    assert sk.errors == 1
    assert span == 10
    sk, span = w2.window(60, t0 + 12.9)
    assert sk.count == 6 and span == pytest.approx(12.9)
    sk, span = w2.window(None, t0 + 12.9)
    assert sk.count == 6 and span == pytest.approx(12.9)
    sk, _ = w2.window(1, t0 + 12.9)
    assert sk.count == 3

    # The 10 s ring forgets after 10 s; the 1 min window still holds it; the total keeps everything.
    sk, _ = w.window(10, t0 + 70.5)
    assert sk.count == 4
    sk, _ = w.window(60, t0 + 70.5)
    assert sk.count == 4  # the six 10 s slots up to now: only the 400s
    sk, span = w.window(300, t0 + 70.5)
    assert sk.count == 10 and span == pytest.approx(70.5)
    assert w.total.count == 10
    sk, _ = w.window(60, t0 + 400)
    assert sk.count == 0
    assert w.total.count == 10


def test_windows_history_and_ring_reuse() -> None:
    t0 = 2_000_000.0
    w = Windows(started_at=t0)
    for s in range(25):
        w.add(t0 + s + 0.1, 1000 + s)
    fine = w.history(t0 + 24.5, fine=True)
    assert [start for start, _ in fine] == [int(t0) + s for s in range(15, 25)]
    assert all(sk.count == 1 for _, sk in fine)
    coarse = w.history(t0 + 24.5)
    assert [start for start, _ in coarse] == [int(t0), int(t0) + 10, int(t0) + 20]
    assert [sk.count for _, sk in coarse] == [10, 10, 5]
    assert w.longest_window_s == 300


def test_windows_add_sketch_is_add() -> None:
    t0 = 3_000_000.0
    a, b = Windows(started_at=t0), Windows(started_at=t0)
    batch = Sketch()
    for v in (5.0, 6.0, 7.0):
        a.add(t0 + 1, v)
        batch.add(v)
    b.add_sketch(t0 + 1, batch)
    assert a.window(10, t0 + 2)[0].to_dict() == b.window(10, t0 + 2)[0].to_dict()
    assert a.total.to_dict() == b.total.to_dict()
