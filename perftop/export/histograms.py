"""The two shapes a timing sketch is exported in: a classic histogram on a log-spaced `le` ladder, and a
Prometheus native (sparse, exponential) histogram mapped bucket for bucket from the sketch.

Classic ladder: `per_decade` bounds in every power of ten from 100 µs to 100 s, at 10**(j / per_decade)
seconds rounded to three significant digits (the same strings on every host, so `sum by (le)` adds
like with like). histogram_quantile() interpolates linearly inside the bucket holding the rank, so its
error is at most the bucket's width (a ratio of 10**(1 / per_decade)) and, on smooth latency
distributions, a fraction of that: see README's Performance section for the figures of each resolution.

Native histogram: schema SCHEMA, whose bucket k holds the values in (BASE**(k - 1), BASE**k] with
BASE = 2**(2**-SCHEMA). Every sketch bucket j (values in (GAMMA**(j - 1), GAMMA**j] ns, all within
ALPHA of its representative r_j) goes whole into the native bucket holding r_j. As BASE < GAMMA, two
sketch buckets never share a native bucket, so only the populated sketch buckets are sent, one native
bucket each, with their exact counts. PromQL answers a quantile with a point e of that native bucket,
so e / r_j lies within [1 / BASE, BASE], and for a value v of the sketch bucket, r_j / v lies within
[1 - ALPHA, 1 + ALPHA]: e is within BASE * (1 + ALPHA) - 1 = 1.90% of v (schema 5 would give 3.0%,
schema 7 1.35% with more, emptier buckets). Bucket counts add, so `sum(rate(...))` over workers merges
as exactly as the sketches themselves do.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Sequence
from functools import lru_cache
from itertools import repeat
from operator import sub

from perftop.wire.sketch import ALPHA, GAMMA, bucket_value

NS_PER_S = 1e9
SCHEMA = 6
"""Native bucket boundaries are powers of 2**(2**-6) = 1.0109: the smallest schema with PromQL's answer
within 2% of the true value (1.90%, see the module's docstring)."""
BASE = 2.0 ** (2.0**-SCHEMA)
NATIVE_ERROR = BASE * (1 + ALPHA) - 1
"""The worst relative error of histogram_quantile() over the native histogram, against the true value."""
ZERO_THRESHOLD = 2.0**-128
"""The native zero bucket's half-width, as Prometheus' Go client has it: it holds the values the sketch
counts as zero (a timer can read 0 ns), and a non-zero threshold marks the histogram as native even when
it has no other bucket."""
SPAN_GAP = 2
"""Up to this many empty native buckets between two populated ones are sent as zero counts inside one
span (cheaper than starting a new span), as Prometheus' Go client does."""
LADDER_FROM = -4
LADDER_TO = 2
"""The classic ladder spans 10**LADDER_FROM s (100 µs) to 10**LADDER_TO s (100 s)."""
MAX_PER_DECADE = 40
"""At most this many classic bounds per decade: three significant digits still tell them apart."""
DEFAULT_PER_DECADE = 10
"""The default classic resolution: histogram_quantile() within 6.3% of the sketch's own p50/p99 on the
latency distributions measured (README), for 64 series per timing (the 1-2-5 ladder gave 24% for 21)."""

_L2G = math.log2(GAMMA)
_L2R = math.log2(bucket_value(0) / NS_PER_S)
_SCALE = 2.0**SCHEMA
_LONG_GAP = re.compile(b"\\x00{%d,}" % (SPAN_GAP + 1))


class Ladder:
    """The classic `le` bounds of one resolution, their label strings, and for each the highest sketch
    bucket wholly at or under it (a bucket straddling a bound counts towards the next one, so no count
    is ever over-stated)."""

    __slots__ = ("bounds", "labels", "per_decade", "thresholds")

    def __init__(self, per_decade: int) -> None:
        if not 1 <= per_decade <= MAX_PER_DECADE:
            raise ValueError(f"buckets per decade must be within 1..{MAX_PER_DECADE}, not {per_decade}")
        self.per_decade = per_decade
        self.bounds: tuple[float, ...] = tuple(
            float(f"{10.0 ** (j / per_decade):.3g}")
            for j in range(LADDER_FROM * per_decade, LADDER_TO * per_decade + 1)
        )
        """Seconds, ascending."""
        self.labels: list[str] = [*(f"{b:g}" for b in self.bounds), "+Inf"]
        self.thresholds: list[int] = [_last_bucket_under(b * NS_PER_S) for b in self.bounds]

    @property
    def series(self) -> int:
        """Series of one classic histogram: a bucket per bound, +Inf, _sum and _count."""
        return len(self.bounds) + 3


def _last_bucket_under(ns: float) -> int:
    """The highest sketch bucket index whose upper edge (GAMMA**i ns) is at most `ns`."""
    i = math.ceil(math.log(ns) / math.log(GAMMA))
    while GAMMA**i > ns:
        i -= 1
    while GAMMA ** (i + 1) <= ns:
        i += 1
    return i


@lru_cache(maxsize=8)
def ladder(per_decade: int = DEFAULT_PER_DECADE) -> Ladder:
    """The ladder of a resolution (ValueError outside 1..MAX_PER_DECADE), made once."""
    return Ladder(per_decade)


def native_index(sketch_index: int) -> int:
    """The native bucket (schema SCHEMA, seconds) holding the representative of a sketch bucket (ns)."""
    return math.ceil((sketch_index * _L2G + _L2R) * _SCALE)


class _NativeIndices(dict[int, int]):
    """sketch bucket -> native bucket, computed on first use: a scrape looks up the same few thousand."""

    def __missing__(self, sketch_index: int) -> int:
        if len(self) > 100_000:
            self.clear()
        k = self[sketch_index] = native_index(sketch_index)
        return k


_NATIVE = _NativeIndices()


def native_buckets(indices: Sequence[int], counts: Sequence[int]) -> tuple[list[tuple[int, int]], list[int]]:
    """The positive buckets of the native histogram of sketch buckets `indices` (ascending) holding
    `counts`: (spans as (offset, length), count deltas), the exposition's form. The first span's offset
    is its first bucket's index, a later span's the number of empty buckets since the previous span;
    each delta is a bucket's count less the previous bucket's (the first: less 0).

    Done over a dense array of the native range, filled, searched for runs of empty buckets (a regular
    expression on a byte mask) and differenced by C-level `map`s: no Python loop per bucket."""
    if len(indices) != len(counts):
        raise ValueError("as many counts as bucket indices are needed")
    if 0 in counts and not (isinstance(indices, range) and counts[0] and counts[-1]):
        # Pairs with empty bins are filtered; dense bins (a range of indices from a populated bin to
        # another) are taken whole: an empty bin sets a bucket the dense array below holds as 0 already.
        indices, counts = [i for i, n in zip(indices, counts, strict=True) if n], [n for n in counts if n]
    if not counts:
        return [], []
    ks = list(map(_NATIVE.__getitem__, indices))
    first = ks[0]
    dense = [0] * (ks[-1] - first + 1)
    deque(map(dense.__setitem__, map(sub, ks, repeat(first)), counts), maxlen=0)
    mask = bytes(map(bool, dense))
    spans: list[tuple[int, int]] = []
    deltas: list[int] = []
    start = end = 0
    previous = 0
    for gap in (*_LONG_GAP.finditer(mask), None):
        stop = len(dense) if gap is None else gap.start()
        run = dense[start:stop]
        spans.append((first + start if not spans else start - end, len(run)))
        deltas.extend(map(sub, run, [previous, *run[:-1]]))
        previous, end = run[-1], stop
        if gap is not None:
            start = gap.end()
    return spans, deltas
