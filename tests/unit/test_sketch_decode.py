"""`Sketch.from_dict`'s bulk decode against the pair-by-pair reference it replaced: the same inputs
accepted, the same sketch built (down to the dense span, which later merges depend on), and merges
unchanged."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perftop.wire.sketch import ALPHA, MAX_BINS, MAX_INDEX, Sketch, SketchError

QS = (0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0)


def reference(data: dict[str, Any]) -> Sketch | None:
    """The decode before the bulk path (checks pair by pair, one `add_bin` per bucket), or None where it
    rejected the input (with SketchError, or with an OverflowError from a count beyond 64 bits)."""
    try:
        out = Sketch()
        count = data["count"]
        out.zero = data["zero"]
        found: dict[int, int] = {}
        for pair in data["bins"]:
            if not (isinstance(pair, list) and len(pair) == 2):
                return None
            i, n = pair
            if isinstance(i, bool) or not isinstance(i, int) or not -MAX_INDEX <= i <= MAX_INDEX:
                return None
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                return None
            found[i] = found.get(i, 0) + n
        if out.zero + sum(found.values()) != count:
            return None
        out.count = count
        if found:
            keys = sorted(found)
            floor = keys[-1] - MAX_BINS + 1
            for i in keys:
                out.add_bin(max(i, floor), found[i])
    except OverflowError:
        return None
    return out


def wire(bins: list[Any], zero: int = 0, count: int | None = None) -> dict[str, Any]:
    if count is None:
        count = zero + sum(n for _i, n in bins)
    return {"alpha": ALPHA, "count": count, "errors": 0, "sum": 1.0, "min": 1.0, "max": 2.0, "zero": zero,
            "bins": bins}  # fmt: skip


def decode(data: dict[str, Any]) -> Sketch | None:
    try:
        return Sketch.from_dict(data)
    except SketchError:
        return None


def assert_same(got: Sketch | None, want: Sketch | None) -> None:
    assert (got is None) == (want is None)
    if got is not None and want is not None:
        assert (got._lo, list(got._counts), got.count, got.zero) == (
            want._lo,
            list(want._counts),
            want.count,
            want.zero,
        )


indices = st.integers(min_value=-MAX_INDEX - 2, max_value=MAX_INDEX + 2)
near = st.integers(min_value=-3000, max_value=3000)
counts = st.integers(min_value=-1, max_value=50) | st.just(2**63 - 1) | st.just(2**63)
odd = st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=2)
pairs = st.tuples(near | indices | odd, counts | odd).map(list)
bad_pairs = st.lists(st.integers(min_value=0, max_value=5), max_size=3) | odd | st.tuples(near, counts)


@settings(max_examples=500)
@given(st.lists(pairs | bad_pairs, max_size=40), st.integers(min_value=0, max_value=3), st.booleans())
def test_any_bins_decode_as_the_reference_does(bins: list[Any], zero: int, sort: bool) -> None:
    if sort:
        bins = sorted(bins, key=lambda p: p[0] if isinstance(p, list) and p and isinstance(p[0], int) else 0)
    counted = sum(p[1] for p in bins if isinstance(p, list) and len(p) == 2 and type(p[1]) is int)
    data = wire(bins, zero, count=zero + counted)
    assert_same(decode(data), reference(data))


@settings(max_examples=300)
@given(
    st.lists(st.tuples(near, st.integers(min_value=0, max_value=9)), max_size=60, unique_by=lambda p: p[0])
)
def test_sorted_distinct_bins_take_the_bulk_path_and_agree(raw: list[tuple[int, int]]) -> None:
    bins = [list(p) for p in sorted(raw)]
    data = json.loads(json.dumps(wire(bins)))
    got = Sketch.from_dict(data)
    assert_same(got, reference(data))
    assert Sketch.from_dict(got.to_dict()).to_dict() == got.to_dict()


@pytest.mark.parametrize(
    "bins",
    [
        [[5, 1], [6, 2], [7, 3]],  # contiguous
        [[5, 1], [9, 2], [10, 0], [40, 3]],  # gaps, a zero count inside
        [[0, 0]],  # only a zero count: a span of one empty bucket
        [[-MAX_INDEX, 1], [MAX_INDEX, 1]],  # wider than MAX_BINS: the low one folds
        [[k, 1] for k in range(0, 3 * MAX_BINS, 3)],  # many fold into the floor
        [[k, 1] for k in range(10, 10 + MAX_BINS)],  # exactly MAX_BINS
        [[k, 1] for k in range(10, 11 + MAX_BINS)],  # one more: the lowest two fold
        [[3, 1], [1, 1], [2, 1]],  # unsorted: the pair-by-pair path
        [[1, 1], [1, 2]],  # a repeated index: its counts add
    ],
)
def test_edge_spans_decode_as_the_reference_does(bins: list[list[int]]) -> None:
    data = wire(bins)
    got = Sketch.from_dict(data)
    assert_same(got, reference(data))
    assert len(got._counts) <= MAX_BINS


@pytest.mark.parametrize(
    "bins",
    [
        [[1, 2, 3]],
        [[1, 2], [3]],
        [[]],
        [(1, 2)],
        [[1, 2], (3, 4)],
        [[1.0, 2]],
        [[1, 2.0]],
        [[1, True]],
        [[False, 2]],
        [[None, 2]],
        [[1, -1]],
        [[MAX_INDEX + 1, 1]],
        [[-MAX_INDEX - 1, 1]],
        [[1, 2], [2, "3"]],
    ],
)
def test_malformed_bins_are_rejected(bins: list[Any]) -> None:
    with pytest.raises(SketchError):
        Sketch.from_dict(wire(bins, count=0))
    with pytest.raises(SketchError):
        Sketch.from_dict(wire(bins, count=2))


def test_a_count_beyond_64_bits_is_a_sketch_error() -> None:
    """The dense counts are 64-bit: a bigger one, or a sum of them folded into one bucket (only a hostile
    agent could send either), is malformed."""
    assert Sketch.from_dict(wire([[1, 2**62], [2, 2**62], [3, 2**62]])).count == 3 * 2**62
    folded = ([[0, 2**62], [1, 2**62], [MAX_BINS + 5, 0]], [[0, 2**62], [MAX_BINS + 5, 0], [1, 2**62]])
    for bins in ([[1, 2**63]], *folded):
        with pytest.raises(SketchError):
            Sketch.from_dict(wire(bins))


@given(
    st.lists(st.floats(min_value=1e-3, max_value=1e12), min_size=1, max_size=100),
    st.lists(st.floats(min_value=1e-3, max_value=1e12), min_size=1, max_size=100),
)
def test_merge_matches_adding_the_values(a: list[float], b: list[float]) -> None:
    one, two, both = Sketch(), Sketch(), Sketch()
    for v in a:
        one.add(v)
        both.add(v)
    for v in b:
        two.add(v)
        both.add(v)
    merged = one.copy()
    merged.merge(two)
    assert merged.to_dict()["bins"] == both.to_dict()["bins"]
    assert merged.quantiles(QS)[1:-1] == both.quantiles(QS)[1:-1]
    assert merged.count == both.count and math.isclose(merged.sum, both.sum)
    assert one.copy().to_dict() == one.to_dict()
