"""What `perftop export` makes of the agents' data: each timing sketch digested once (count, sum,
quantiles, classic and native buckets), and the metric families of one collection."""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from perftop.export.histograms import Ladder, ladder, native_buckets
from perftop.render.units import safe_text
from perftop.wire.sketch import ALPHA, MAX_INDEX, Sketch, bucket_value, quantiles_at

if TYPE_CHECKING:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

NS_PER_S = 1e9
BUCKETS_S: tuple[float, ...] = ladder().bounds
"""The `le` bounds of every timing histogram at the default resolution, in seconds (see histograms.py)."""
NATIVE_FAMILY = "perftop_timing_native_seconds"
"""The native histogram of every timing: `histogram_quantile(0.99, sum(rate(
perftop_timing_native_seconds{metric="api.checkout"}[1m])))` is the p99 of every worker, within 2%."""
QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99)
"""The quantiles of the timing summaries."""


class TimingDigest:
    """What one scrape exports of one timing sketch: count, sum, quantiles, cumulative bucket counts on
    the classic ladder, and the native histogram's buckets (worked out when first asked for: only the
    scrapes in a format with native histograms need them)."""

    __slots__ = ("_bins", "_native", "buckets", "count", "errors", "quantiles", "sum_s", "zero")

    def __init__(
        self,
        count: int,
        errors: int,
        sum_s: float,
        quantiles: list[float],
        buckets: list[float],
        zero: int = 0,
        bins: tuple[Sequence[int], Sequence[int]] = ([], []),
    ) -> None:
        """`bins`: the sketch's populated bins, (indices ascending, counts), for the native buckets."""
        self.count = count
        self.errors = errors
        self.sum_s = sum_s
        self.quantiles = quantiles
        """Seconds, one per QUANTILES (NaN when the sketch is empty)."""
        self.buckets = buckets
        """Cumulative counts, one per bound of the ladder and a last one for +Inf (the count): whole
        numbers, as the sketch's (ints, written as floats)."""
        self.zero = zero
        """Values the sketch counts as zero (the native zero bucket)."""
        self._bins = bins
        self._native: tuple[list[tuple[int, int]], list[int]] | None = None

    def _native_buckets(self) -> tuple[list[tuple[int, int]], list[int]]:
        if self._native is None:
            self._native = native_buckets(*self._bins)
        return self._native

    @property
    def native_spans(self) -> list[tuple[int, int]]:
        """The native histogram's positive spans (see histograms.native_buckets)."""
        return self._native_buckets()[0]

    @property
    def native_deltas(self) -> list[int]:
        """The native histogram's positive bucket deltas."""
        return self._native_buckets()[1]


def digest_sketch(data: Any, lad: Ladder | None = None, native: bool = False) -> TimingDigest:
    """Summarise a serialized sketch (values in ns) in one pass over its sorted bins, with classic
    buckets on `lad` (default: the default ladder) and, if `native`, the native buckets (else none: an
    empty native histogram). Its bins in either form of protocol.bins_form: `Sketch.to_dict`'s pairs, or
    dense (`lo` and `counts`, what `perftop export` asks its agents for).

    The quantiles are `quantiles_of`'s, as `Sketch.quantiles` gives them (nearest rank ceil(q * count),
    clamped to the exact min and max), read off the running counts made for the buckets (see
    `_quantiles`). ValueError or TypeError when the sketch is malformed.
    """
    lad = lad or ladder()
    if not isinstance(data, dict) or data.get("alpha") != ALPHA:
        raise ValueError("not a sketch of this accuracy")
    count = int(data["count"])
    zero = int(data["zero"])
    idx: Sequence[int]
    if "bins" in data:
        idx, counts, cum, buckets = _pair_buckets(data["bins"], count, zero, lad.thresholds)
    else:
        idx, counts, cum, buckets = _dense_buckets(data["lo"], data["counts"], count, zero, lad.thresholds)
    buckets.append(count)
    if count:
        quantiles = _quantiles(count, zero, idx, cum, float(data["min"]), float(data["max"]))
    else:
        quantiles = [math.nan] * len(QUANTILES)
    return TimingDigest(
        count,
        int(data.get("errors") or 0),
        float(data["sum"]) / NS_PER_S,
        quantiles,
        buckets,
        zero,
        (idx, counts) if native else ([], []),
    )


def _quantiles(
    count: int, zero: int, idx: Sequence[int], cum: list[int], low: float, high: float
) -> list[float]:
    """The QUANTILES in seconds of a non-empty sketch, read off the running counts `cum` made for the
    buckets already (`quantiles_of` would make them again, a third of a digest's time on a host's
    thousands of timings)."""
    return [value / NS_PER_S for value in quantiles_at(QUANTILES, count, zero, idx, cum, low, high)]


def _checked(cum: list[int], count: int, zero: int, counts: list[int]) -> None:
    """ValueError unless the bins' running counts `cum` (from the zero bucket's) end at `count`, and no
    count is negative."""
    if cum[-1] != count or count < 0 or zero < 0 or min(counts, default=0) < 0:
        raise ValueError("bin counts do not add up to the count")


def _pair_buckets(
    bins: Any, count: int, zero: int, thresholds: list[int]
) -> tuple[list[int], list[int], list[int], list[float]]:
    """(bin indices ascending, their counts, their running counts from the zero bucket's, the cumulative
    count at each threshold) of `[index, count]` pairs, in any order."""
    if not isinstance(bins, list):
        raise TypeError("bins must be a list")
    # Columns at C speed; a pair of the wrong length fails the unpacking, a non-number the arithmetic.
    idx, counts = (list(column) for column in zip(*bins, strict=True)) if bins else ([], [])
    if idx != sorted(idx):
        order = sorted(range(len(idx)), key=idx.__getitem__)
        idx = [idx[k] for k in order]
        counts = [counts[k] for k in order]
    # cum[k]: the values in the zero bucket and the first k bins.
    cum = list(accumulate(counts, initial=zero))
    _checked(cum, count, zero, counts)
    if len(set(idx)) != len(idx):
        raise ValueError("a bin appears twice")
    if idx and not -MAX_INDEX <= idx[0] <= idx[-1] <= MAX_INDEX:
        raise ValueError("a bin index beyond the float range")
    # The cumulative count at each bound: the bins up to its threshold, found by C-level bisects.
    return idx, counts, cum, list(map(cum.__getitem__, map(partial(bisect_right, idx), thresholds)))


def _dense_buckets(
    lo: Any, counts: Any, count: int, zero: int, thresholds: list[int]
) -> tuple[range, list[int], list[int], list[float]]:
    """(bin indices, their counts, their running counts from the zero bucket's, the cumulative count at
    each threshold) of dense bins: `counts[k]` in bin `lo + k`. No search: a threshold's cumulative
    count is at its offset from `lo`."""
    if type(lo) is not int or not isinstance(counts, list):
        raise TypeError("lo must be an integer, counts a list")
    n = len(counts)
    if n and not -MAX_INDEX <= lo <= lo + n - 1 <= MAX_INDEX:
        raise ValueError("a bin index beyond the float range")
    cum = list(accumulate(counts, initial=zero))
    _checked(cum, count, zero, counts)
    if not n:
        return range(lo, lo), counts, cum, [zero] * len(thresholds)
    # Thresholds under `lo` count the zero bucket only, those at or over the last bin everything.
    below, within = bisect_left(thresholds, lo), bisect_left(thresholds, lo + n - 1)
    buckets: list[float] = [zero] * below
    buckets += map(cum.__getitem__, map((1 - lo).__add__, thresholds[below:within]))
    buckets += [count] * (len(thresholds) - within)
    return range(lo, lo + n), counts, cum, buckets


QUERY_BUCKETS: tuple[float, ...] = (0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500)
"""The `le` bounds of the queries-per-request histograms."""
QUERY_LE = [*(f"{b:g}" for b in QUERY_BUCKETS), "+Inf"]


def count_buckets(data: Any, bounds: Sequence[float]) -> tuple[list[float], float]:
    """Cumulative counts of a sketch of small whole numbers (queries per request) at each bound and +Inf,
    and the sum. A bucket's values are within 1% of its representative, so whole numbers up to about 50
    fall in buckets of their own; each counts at the first bound its representative does not exceed."""
    sketch = Sketch.from_dict(data)
    cumulative = []
    for bound in bounds:
        n = sketch.zero + sum(c for i, c in sketch.bins.items() if bucket_value(i) <= bound + 0.5)
        cumulative.append(float(n))
    cumulative.append(float(sketch.count))
    return cumulative, float(sketch.sum)


class Families:
    """The metric families of one scrape, created on first use so empty ones are not exposed."""

    def __init__(self) -> None:
        self._by_name: dict[str, Metric] = {}

    def gauge(self, name: str, doc: str, labels: Sequence[str], unit: str = "") -> GaugeMetricFamily:
        from prometheus_client.core import GaugeMetricFamily

        fam = self._by_name.get(name)
        if fam is None:
            fam = self._by_name[name] = GaugeMetricFamily(name, doc, labels=labels, unit=unit)
        assert isinstance(fam, GaugeMetricFamily)
        return fam

    def counter(self, name: str, doc: str, labels: Sequence[str], unit: str = "") -> CounterMetricFamily:
        from prometheus_client.core import CounterMetricFamily

        fam = self._by_name.get(name)
        if fam is None:
            fam = self._by_name[name] = CounterMetricFamily(name, doc, labels=labels, unit=unit)
        assert isinstance(fam, CounterMetricFamily)
        return fam

    def get(self, name: str) -> Metric | None:
        """The family `name`, if made."""
        return self._by_name.get(name)

    def add(self, fam: Metric) -> Metric:
        return self._by_name.setdefault(fam.name, fam)

    def family(self, name: str, make: Callable[[], Any]) -> Any:
        """The family `name`, made by `make` on first use."""
        fam = self._by_name.get(name)
        if fam is None:
            fam = self._by_name[name] = make()
        return fam

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._by_name.values())


def label_value(value: object) -> str:
    """A label value from the app (names, fingerprints, versions) with its control characters shown as
    escapes: the exposition format would carry an ESC raw, to whoever curls /metrics to a terminal."""
    return safe_text(value, newlines=False)


def limit_value(value: int | float | None) -> float:
    """A limit for Prometheus: unlimited (None) is +Inf, so `used / limit` reads 0."""
    return math.inf if value is None else float(value)
