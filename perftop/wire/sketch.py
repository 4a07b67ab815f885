"""A mergeable relative-error quantile sketch, and sliding windows built from rings of them.

Standard library only: the agent (inside the monitored app) and the viewer share this module.

The sketch is log-bucketed in the manner of DDSketch: a positive value v falls in bucket
i = ceil(log(v) / log(gamma)) with gamma = (1 + a) / (1 - a). The quantile q is the value at nearest rank
ceil(q * n), as HdrHistogram answers: the bucket's representative 2 * gamma**i / (gamma + 1), which is
within a relative error a of every value in the bucket, clamped to the exact min and max that every
sketch keeps (rank 1 and rank n answer them exactly). Counts per bucket add up, so sketches of different
seconds, windows or processes merge exactly; percentiles are never averaged. The number of buckets is
capped (the lowest are folded together past the cap), which bounds memory whatever the number of samples.
"""

from __future__ import annotations

import math
import operator
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate, islice
from typing import Any, Generic, TypeVar

ALPHA = 0.008
"""Relative accuracy of every quantile (0.8%, under the promised 1% with room for float rounding)."""
GAMMA = (1 + ALPHA) / (1 - ALPHA)
_INV_LOG_GAMMA = 1.0 / math.log(GAMMA)
_REPR_FACTOR = 2.0 / (GAMMA + 1.0)
MAX_BINS = 2048
"""Bucket cap per sketch: with ALPHA=0.008 this spans a ratio of 1e14 between smallest and largest."""
MAX_WIRE_BINS = 100_000
"""What `Sketch.from_dict` accepts at most: a guard against hostile input, far above MAX_BINS."""
MAX_INDEX = math.ceil(-math.log(5e-324) * _INV_LOG_GAMMA) + 1
"""Bucket indices of positive floats (down to the smallest subnormal) stay within +-MAX_INDEX;
`from_dict` rejects any beyond."""


class SketchError(ValueError):
    """A serialized sketch is malformed."""


def bucket_of(value: float) -> int:
    """The bucket index of a positive value."""
    return math.ceil(math.log(value) * _INV_LOG_GAMMA)


def bucket_value(index: int) -> float:
    """The representative value of a bucket: within ALPHA of every value that falls in it."""
    try:
        return float(GAMMA**index * _REPR_FACTOR)
    except OverflowError:
        # Only the topmost buckets of the float range; callers clamp to the exact max.
        return math.inf


def check_quantiles(qs: Iterable[float]) -> None:
    """ValueError unless every q is within 0..1."""
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be between 0 and 1, not {q}")


def nearest_rank(q: float, count: int) -> int:
    """The 1-based rank of the value at quantile q among `count` sorted values: ceil(q * count), at least 1.

    The definition of HdrHistogram, Prometheus summaries and numpy's `method="inverted_cdf"`: the p99 of
    [100, 200] is 200, and the p99 of 20 requests is the slowest one.
    """
    return min(max(math.ceil(q * count), 1), count)


def quantiles_of(
    qs: Sequence[float],
    count: int,
    zero: int,
    indices: Sequence[int],
    counts: Iterable[int],
    low: float,
    high: float,
) -> list[float]:
    """The nearest-rank quantiles of a non-empty sketch given as its parts: `count` values, `zero` of them
    <= 0, `counts[k]` in bucket `indices[k]` (ascending), exact extremes `low` and `high`.

    Rank 1 and rank `count` answer the exact min and max; a rank in the zero bucket answers 0; any other
    answers its bucket's representative (within ALPHA of the value at that rank). Every answer is clamped
    to [low, high], which only brings it closer to the true value. `Sketch.quantiles` and the Prometheus
    exporter both answer through `quantiles_at`, so they agree to the bit.
    """
    check_quantiles(qs)
    return quantiles_at(qs, count, zero, indices, list(accumulate(counts, initial=zero)), low, high)


def quantiles_at(
    qs: Sequence[float],
    count: int,
    zero: int,
    indices: Sequence[int],
    running: Sequence[int],
    low: float,
    high: float,
) -> list[float]:
    """`quantiles_of` (quantiles already checked) from the running counts: `running[k]` the values in the
    zero bucket and the first k buckets, as `accumulate(counts, initial=zero)` makes them. For a caller
    that has them already: the exporter makes them for a timing's histogram buckets."""
    out: list[float] = []
    buckets = len(indices)
    for q in qs:
        rank = nearest_rank(q, count)
        if rank == 1:
            value = low
        elif rank == count:
            value = high
        elif rank <= zero:
            value = 0.0
        else:
            # The first bucket whose running count reaches the rank holds the value at that rank.
            pos = bisect_left(running, rank, 1) - 1
            value = bucket_value(indices[pos]) if pos < buckets else high
        out.append(min(max(value, low), high))
    return out


class Sketch:
    """Counts of values in log-spaced buckets, with exact count, sum, min, max and an error count.

    The bucket counts are stored densely, as one array of 8-byte counts from the lowest bucket index in
    use to the highest: latency buckets are contiguous, so this costs about a tenth of a dict's memory.
    The span is capped at MAX_BINS buckets by folding the lowest ones together.
    """

    __slots__ = ("_counts", "_lo", "count", "errors", "max", "min", "sum", "zero")

    def __init__(self) -> None:
        self._lo = 0
        """Bucket index of `_counts[0]`."""
        self._counts = array("q")
        """Number of values in buckets `_lo`, `_lo + 1`, ... (positive values only)."""
        self.zero = 0
        """Number of values <= 0 (a timer can read 0 ns)."""
        self.count = 0
        self.errors = 0
        """How many of the values were recorded for a call that raised."""
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    @property
    def bins(self) -> dict[int, int]:
        """Bucket index -> number of values in it, for the buckets in use (a copy: use `add_bin` to write)."""
        lo = self._lo
        return {lo + k: n for k, n in enumerate(self._counts) if n}

    def add_bin(self, index: int, n: int) -> None:
        """Add n to the count of bucket `index` (count, sum and extremes are the caller's to keep)."""
        counts = self._counts
        if not counts:
            self._lo = index
            counts.append(n)
            return
        k = index - self._lo
        if k < 0:
            counts[0:0] = array("q", bytes(8 * -k))
            self._lo = index
            k = 0
        elif k >= len(counts):
            counts.extend(array("q", bytes(8 * (k - len(counts) + 1))))
        counts[k] += n
        if len(counts) > MAX_BINS:
            self._collapse()

    def add(self, value: float, n: int = 1, errors: int = 0) -> None:
        """Record `value` n times, `errors` of which were failed calls."""
        if n <= 0:
            return
        if value > 0:
            i = math.ceil(math.log(value) * _INV_LOG_GAMMA)
            k = i - self._lo
            counts = self._counts
            if counts and 0 <= k < len(counts):
                counts[k] += n
            else:
                self.add_bin(i, n)
        else:
            self.zero += n
        self.count += n
        self.errors += errors
        self.sum += value * n
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def add_counts(self, counts: Mapping[float, int]) -> None:
        """Record many values at once: `counts` maps value -> how many times it was seen."""
        for value, n in counts.items():
            self.add(value, n)

    def merge(self, other: Sketch) -> None:
        """Add every value of `other` to this sketch (exact: bucket counts add)."""
        if other.count == 0:
            return
        theirs = other._counts
        if theirs and not self._counts:  # into an empty sketch (a copy, a first worker): take theirs
            self._lo = other._lo
            self._counts = array("q", theirs)
        elif theirs:
            # Widen to cover their span once, then add the overlapping slice in one go.
            self.add_bin(other._lo, 0)
            self.add_bin(other._lo + len(theirs) - 1, 0)
            mine, off = self._counts, other._lo - self._lo
            if off >= 0:
                end = off + len(theirs)
                mine[off:end] = array("q", map(operator.add, mine[off:end], theirs))
            else:  # our lowest buckets were folded past theirs: fold theirs the same way
                for k, n in enumerate(theirs):
                    if n:
                        mine[max(0, off + k)] += n
        self.zero += other.zero
        self.count += other.count
        self.errors += other.errors
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> Sketch:
        out = Sketch()
        out.merge(self)
        return out

    def _collapse(self) -> None:
        """Fold the lowest buckets into one so that the span is MAX_BINS (only low quantiles lose)."""
        counts = self._counts
        extra = len(counts) - MAX_BINS
        folded = sum(counts[: extra + 1])
        del counts[:extra]
        counts[0] = folded
        self._lo += extra

    def quantile(self, q: float) -> float | None:
        """The value at quantile q (0..1) by nearest rank ceil(q * count), or None if empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Iterable[float]) -> list[float | None]:
        """Several quantiles in one pass over the buckets, by nearest rank ceil(q * count) (see
        `quantiles_of`); None for each if the sketch is empty."""
        qs = list(qs)
        if self.count == 0:
            check_quantiles(qs)
            return [None] * len(qs)
        lo = self._lo
        return list(
            quantiles_of(
                qs, self.count, self.zero, range(lo, lo + len(self._counts)), self._counts, self.min, self.max
            )
        )

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form; `from_dict` reverses it."""
        return {
            "alpha": ALPHA,
            "count": self.count,
            "errors": self.errors,
            # Clamped: JSON has no infinity, and only absurd values overflow a float sum.
            "sum": min(max(self.sum, -sys.float_info.max), sys.float_info.max),
            "min": self.min if self.count else None,
            "max": self.max if self.count else None,
            "zero": self.zero,
            "bins": [[self._lo + k, n] for k, n in enumerate(self._counts) if n],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Sketch:
        """Rebuild a sketch from `to_dict` output, rejecting anything malformed with SketchError.

        The bins `to_dict` writes (ascending, distinct, plain ints in range) are checked and taken in
        bulk by `_sorted_bins`; anything else goes through a pair-by-pair check, which also says what is
        wrong. Both accept the same inputs and build the same sketch.
        """
        if not isinstance(data, dict):
            raise SketchError("sketch must be an object")
        if data.get("alpha") != ALPHA:
            raise SketchError(f"sketch accuracy {data.get('alpha')!r} differs from this side's {ALPHA}")
        out = cls()
        try:
            count = _nonneg_int(data["count"], "count")
            out.errors = _nonneg_int(data["errors"], "errors")
            out.zero = _nonneg_int(data["zero"], "zero")
            out.sum = _finite(data["sum"], "sum")
            bins = data["bins"]
            if not isinstance(bins, list) or len(bins) > MAX_WIRE_BINS:
                raise SketchError("bins must be a list of [index, count] pairs")
            columns = _sorted_bins(bins)
            if columns is None:
                columns = _checked_bins(bins)
            indices, counts = columns
            total = out.zero + sum(counts)
            if total != count:
                raise SketchError(f"bin counts add up to {total}, not count {count}")
            out.count = count
            if count:
                out.min = _finite(data["min"], "min")
                out.max = _finite(data["max"], "max")
                if out.min > out.max:
                    raise SketchError("min is above max")
            if out.errors > count:
                raise SketchError("more errors than values")
        except (KeyError, TypeError) as exc:
            raise SketchError(f"malformed sketch: {exc!r}") from None
        if indices:
            try:
                out._lo, out._counts = _dense(indices, counts)
            except OverflowError:
                raise SketchError("a bin count is beyond a 64-bit integer") from None
        return out


_LIST = {list}
_INT = {int}
"""The set of the types of a column of plain ints (bools and other int subclasses take the slow path)."""


def _sorted_bins(bins: list[Any]) -> tuple[Sequence[int], Sequence[int]] | None:
    """The index and count columns of `bins` if it is what `to_dict` writes: [index, count] lists of
    plain ints, indices ascending without repeats and within +-MAX_INDEX, counts >= 0; else None.

    Every check runs over a whole column in C (map, zip, min), not pair by pair in Python: this is the
    decode of every sketch the viewer and the exporter receive.
    """
    if not bins:
        return (), ()
    if set(map(type, bins)) != _LIST:
        return None
    try:
        indices, counts = zip(*bins, strict=True)  # and so every pair has two items
    except ValueError:
        return None
    if set(map(type, indices)) != _INT or set(map(type, counts)) != _INT:
        return None
    if not (indices[0] >= -MAX_INDEX and indices[-1] <= MAX_INDEX and min(counts) >= 0):
        return None
    if not all(map(operator.lt, indices, islice(indices, 1, None))):
        return None
    return indices, counts


def _checked_bins(bins: list[Any]) -> tuple[list[int], list[int]]:
    """The columns of any valid `bins` (in any order, an index maybe repeated: its counts add), sorted by
    index; SketchError naming the first malformed pair."""
    found: dict[int, int] = {}
    for pair in bins:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise SketchError("bins must be a list of [index, count] pairs")
        i, n = pair
        if isinstance(i, bool) or not isinstance(i, int) or not -MAX_INDEX <= i <= MAX_INDEX:
            raise SketchError("bin index must be an integer within the float range")
        n = _nonneg_int(n, "bin count")
        found[i] = found.get(i, 0) + n
    keys = sorted(found)
    return keys, [found[i] for i in keys]


def _dense(indices: Sequence[int], counts: Sequence[int]) -> tuple[int, array[int]]:
    """The lowest index and dense counts of sorted distinct bins, as `Sketch.add_bin` would build them one
    by one: from the lowest index to the highest, zeros between, and never more than MAX_BINS buckets
    (those below the span fold into its lowest, whatever the input says)."""
    hi = indices[-1]
    lo = indices[0]
    floor = hi - MAX_BINS + 1
    folded = 0
    if lo < floor:
        cut = bisect_left(indices, floor)
        folded = sum(counts[:cut])
        indices, counts, lo = indices[cut:], counts[cut:], floor
    if hi - indices[0] + 1 == len(indices) and indices[0] == lo:  # contiguous: one copy
        dense = array("q", counts)
    else:
        # Latency bins are mostly consecutive, with gaps in the tails: copy the run of consecutive
        # indices around the middle in one slice, and set the bins of the tails one by one.
        dense = array("q", bytes(8 * (hi - lo + 1)))
        start, end = _middle_run(indices)
        at = indices[start] - lo
        dense[at : at + end - start] = array("q", counts[start:end])
        for i, n in zip(indices[:start], counts[:start], strict=True):
            dense[i - lo] = n
        for i, n in zip(indices[end:], counts[end:], strict=True):
            dense[i - lo] = n
    if folded:
        dense[0] += folded
    return lo, dense


def _middle_run(indices: Sequence[int]) -> tuple[int, int]:
    """[start, end): the positions of the run of consecutive indices that holds the middle one.

    In sorted distinct indices, `indices[k] - k` never decreases, and is the same all along a run of
    consecutive ones: so the run's ends are found by bisection, in a few steps whatever its length.
    """
    mid = len(indices) // 2
    step = indices[mid] - mid
    start = bisect_left(range(mid + 1), True, key=lambda k: indices[k] - k == step)
    end = mid + bisect_left(range(mid, len(indices)), True, key=lambda k: indices[k] - k != step)
    return start, end


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SketchError(f"{what} must be a number")
    try:
        out = float(value)
    except OverflowError:
        raise SketchError(f"{what} is out of range") from None
    if not math.isfinite(out):
        raise SketchError(f"{what} must be finite")
    return out


def _nonneg_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SketchError(f"{what} must be a non-negative integer")
    return value


_UNUSED = Sketch()
"""The placeholder of ring slots not used yet: epoch -1 never matches, so nothing ever adds to it."""


FINE_S, FINE_SLOTS, COARSE_S, COARSE_SLOTS = 1, 10, 10, 30
"""The default rings: ten 1 s slots (the 10 s window exactly), thirty 10 s slots (1 min and 5 min)."""


def window_span(
    seconds: float | None,
    now: float,
    started_at: float,
    fine_s: int = FINE_S,
    fine_slots: int = FINE_SLOTS,
    coarse_s: int = COARSE_S,
    coarse_slots: int = COARSE_SLOTS,
) -> float:
    """The time the last `seconds` (None: since start) covers, what rates divide by: the window, or the
    time since start if that is shorter, or the chosen ring's length if that is shorter still."""
    since_start = max(now - started_at, 1e-9)
    if seconds is None or seconds <= 0:
        return since_start
    fine = fine_s * fine_slots
    longest = fine if seconds <= fine else coarse_s * coarse_slots
    return min(float(seconds), since_start, float(longest))


_S = TypeVar("_S")


class _Rings(Generic[_S]):
    """A ring of fine slots and a ring of coarse slots, each slot (epoch, value): the slot rules that
    `Windows` (sketches) and `SumWindows` (sums) share. A window up to the fine ring's length is read
    from the fine ring, a longer one from the coarse ring, to within one coarse slot."""

    __slots__ = ("_coarse", "_coarse_s", "_fine", "_fine_s", "started_at")

    def __init__(
        self, started_at: float, fine_s: int, fine_slots: int, coarse_s: int, coarse_slots: int, unused: _S
    ) -> None:
        self.started_at = started_at
        self._fine_s = fine_s
        self._coarse_s = coarse_s
        # Unused slots share one placeholder value (epoch -1 never matches), so an idle metric costs two
        # short lists.
        self._fine: list[tuple[int, _S]] = [(-1, unused)] * fine_slots
        self._coarse: list[tuple[int, _S]] = [(-1, unused)] * coarse_slots

    @property
    def longest_window_s(self) -> int:
        return self._coarse_s * len(self._coarse)

    def _in_window(self, seconds: float, now: float) -> tuple[list[_S], float]:
        """The values of the slots the last `seconds` (> 0) covers, and the span they cover."""
        if seconds <= self._fine_s * len(self._fine):
            ring, width = self._fine, self._fine_s
        else:
            ring, width = self._coarse, self._coarse_s
        slots = max(1, math.ceil(seconds / width))
        last = int(now // width)
        first = last - min(slots, len(ring)) + 1
        values = [value for start, value in ring if first <= start <= last]
        span = window_span(
            seconds, now, self.started_at, self._fine_s, len(self._fine), self._coarse_s, len(self._coarse)
        )
        return values, span


class Windows(_Rings[Sketch]):
    """Sliding windows over one metric: a ring of fine slots, a ring of coarse slots, and a total.

    With the defaults, 10 one-second slots answer the 10 s window exactly, and 30 ten-second slots answer
    the 1 min and 5 min windows to within one coarse slot. Memory is bounded: at most 41 sketches per
    metric, each of at most MAX_BINS buckets.
    """

    __slots__ = ("total",)

    def __init__(
        self,
        started_at: float,
        fine_s: int = FINE_S,
        fine_slots: int = FINE_SLOTS,
        coarse_s: int = COARSE_S,
        coarse_slots: int = COARSE_SLOTS,
    ) -> None:
        # A slot gets a sketch of its own when its second first comes round; `_UNUSED` is never written.
        super().__init__(started_at, fine_s, fine_slots, coarse_s, coarse_slots, _UNUSED)
        self.total = Sketch()

    @staticmethod
    def _slot(ring: list[tuple[int, Sketch]], width: int, now: float) -> Sketch:
        epoch = int(now // width)
        k = epoch % len(ring)
        start, sk = ring[k]
        if start != epoch:
            sk = Sketch()
            ring[k] = (epoch, sk)
        return sk

    def add(self, now: float, value: float, n: int = 1, errors: int = 0) -> None:
        """Record `value` n times at time `now` (unix seconds) in every ring and the total."""
        self._slot(self._fine, self._fine_s, now).add(value, n, errors)
        self._slot(self._coarse, self._coarse_s, now).add(value, n, errors)
        self.total.add(value, n, errors)

    def add_sketch(self, now: float, sketch: Sketch) -> None:
        """Record everything in `sketch` at time `now`."""
        self._slot(self._fine, self._fine_s, now).merge(sketch)
        self._slot(self._coarse, self._coarse_s, now).merge(sketch)
        self.total.merge(sketch)

    def window(self, seconds: float | None, now: float) -> tuple[Sketch, float]:
        """The merged sketch of the last `seconds` (None: since start), and the span it covers in seconds.

        The span is what rates divide by: the window, or the time since start if that is shorter.
        """
        since_start = max(now - self.started_at, 1e-9)
        if seconds is None or seconds <= 0:
            return self.total.copy(), since_start
        sketches, span = self._in_window(seconds, now)
        out = Sketch()
        for sk in sketches:
            out.merge(sk)
        return out, span

    def history(self, now: float, fine: bool = False) -> list[tuple[int, Sketch]]:
        """(slot start in unix seconds, sketch) for each slot still in the ring, oldest first."""
        ring, width = (self._fine, self._fine_s) if fine else (self._coarse, self._coarse_s)
        last = int(now // width)
        first = last - len(ring) + 1
        return [(start * width, sk) for start, sk in sorted(ring, key=lambda s: s[0]) if first <= start]


class SumWindows(_Rings[float]):
    """Sums over sliding windows, with `Windows`' rings and slot rules, and a total. For counters."""

    __slots__ = ("total",)

    def __init__(
        self,
        started_at: float,
        fine_s: int = FINE_S,
        fine_slots: int = FINE_SLOTS,
        coarse_s: int = COARSE_S,
        coarse_slots: int = COARSE_SLOTS,
    ) -> None:
        super().__init__(started_at, fine_s, fine_slots, coarse_s, coarse_slots, 0)
        self.total: float = 0

    def add(self, now: float, value: float) -> None:
        """Add `value` at time `now` (unix seconds) to every ring and the total."""
        for ring, width in ((self._fine, self._fine_s), (self._coarse, self._coarse_s)):
            epoch = int(now // width)
            k = epoch % len(ring)
            start, held = ring[k]
            ring[k] = (epoch, held + value if start == epoch else 0 + value)
        self.total += value

    def window(self, seconds: float | None, now: float) -> float:
        """The sum over the last `seconds` (None: since start), with `Windows.window`'s slot rules."""
        if seconds is None or seconds <= 0:
            return self.total
        values, _span = self._in_window(seconds, now)
        return sum(values)
