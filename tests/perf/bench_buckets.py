"""How far PromQL's histogram_quantile() is from perftop's own quantiles, per classic ladder resolution
(`perftop export --buckets-per-decade N`) and for the native histograms, and what each costs in series.

Two sets of timings: the demo service's (`python -m perftop.launch.demo_service`, run for
--seconds, its sketches read
from its agent) and a grid of lognormal distributions (medians 1.3 ms to 0.9 s, sigma 0.3 to 1.2, 20,000
values each). For each timing with at least 200 values, p50 and p99 are computed three ways: the
sketch's own (what `perftop snapshot` and the summaries say), histogram_quantile() over the classic
buckets as the exporter fills them (a sketch bucket counts at the first bound its upper edge does not
exceed), and histogram_quantile() over the native buckets (PromQL's linear interpolation inside the
native bucket holding the rank). The old fixed 1-2-5 ladder (100 µs to 50 s) is shown for comparison.

Run: .venv/bin/python tests/perf/bench_buckets.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
from bisect import bisect_right
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from perftop.collectors.agent_client import AgentClient  # noqa: E402
from perftop.export.histograms import BASE, ladder, native_buckets  # noqa: E402
from perftop.wire.sketch import GAMMA, Sketch  # noqa: E402
from tests.perf._common import demo_service  # noqa: E402

OLD_1_2_5 = tuple(m * 10.0**e for e in range(-4, 2) for m in (1.0, 2.0, 5.0))
RESOLUTIONS = (5, 8, 10, 12, 16, 20)
QS = (0.5, 0.99)


def classic_quantile(q: float, sketch: Sketch, bounds: tuple[float, ...]) -> float:
    """histogram_quantile(q) over the classic buckets the exporter makes of `sketch` on `bounds` (s)."""
    bins = sorted(sketch.bins.items())
    edges = [GAMMA**i / 1e9 for i, _ in bins]  # each bin's upper edge, s
    cumulative = []
    running = 0
    for _, n in bins:
        running += n
        cumulative.append(running)
    counts = []
    for bound in bounds:
        pos = bisect_right(edges, bound * (1 + 1e-12))
        counts.append(sketch.zero + (cumulative[pos - 1] if pos else 0))
    rank = q * sketch.count
    lower, below = 0.0, 0
    for bound, count in zip(bounds, counts, strict=True):
        if count >= rank:
            return lower + (bound - lower) * (rank - below) / (count - below) if count > below else bound
        lower, below = bound, count
    return bounds[-1]  # in the +Inf bucket: PromQL answers the highest finite bound


def native_quantile(q: float, sketch: Sketch) -> float:
    """histogram_quantile(q) over the native histogram the exporter makes of `sketch`."""
    bins = sorted(sketch.bins.items())
    spans, deltas = native_buckets([i for i, _ in bins], [n for _, n in bins])
    rank = q * sketch.count
    seen = sketch.zero
    index = count = k = 0
    for s, (offset, length) in enumerate(spans):
        index = offset if s == 0 else index + offset
        for _ in range(length):
            count += deltas[k]
            k += 1
            if count and seen + count >= rank:
                lower, upper = BASE ** (index - 1), BASE**index
                return lower + (upper - lower) * (rank - seen) / count
            seen += count
            index += 1
    raise AssertionError("rank beyond the buckets")


def demo_sketches(seconds: float) -> dict[str, Sketch]:
    """The demo service's timings after `seconds` of its own load."""
    with (
        tempfile.TemporaryDirectory(prefix="perftop-bench-buckets-") as tmp,
        demo_service(tmp, "--duration", str(seconds + 30), timeout=120) as demo,
    ):
        subprocess.run(["sleep", str(seconds)], check=True)
        client = AgentClient(os.path.join(tmp, f"{demo.pid}.sock"), timeout=10)
        try:
            stats = client.call("stats", {"window": None}, timeout=10)
        finally:
            client.close()
    return {f"demo {name}": Sketch.from_dict(t["sketch"]) for name, t in stats["timings"].items()}


def grid_sketches() -> dict[str, Sketch]:
    out = {}
    for median in (0.0013, 0.004, 0.02, 0.07, 0.25, 0.9):
        for sigma in (0.3, 0.8, 1.2):
            rng = random.Random(f"{median}-{sigma}")
            sketch = Sketch()
            for _ in range(20_000):
                sketch.add(rng.lognormvariate(math.log(median * 1e9), sigma))
            out[f"lognormal {median * 1000:g} ms, sigma {sigma}"] = sketch
    return out


def errors(sketches: dict[str, Sketch], estimate: object) -> list[float]:
    out = []
    for sketch in sketches.values():
        for q in QS:
            own = sketch.quantile(q)
            assert own is not None
            value = estimate(q, sketch)  # type: ignore[operator]
            out.append(abs(value / (own / 1e9) - 1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the demo runs first")
    args = parser.parse_args()
    sets = {
        "demo": {k: v for k, v in demo_sketches(args.seconds).items() if v.count >= 200},
        "grid": grid_sketches(),
    }
    for label, sketches in sets.items():
        sys.stdout.write(f"{label}: {len(sketches)} timings, p50 and p99 each\n")
        rows: list[tuple[str, int, object]] = [
            ("1-2-5 ladder (old)", len(OLD_1_2_5) + 3, lambda q, s: classic_quantile(q, s, OLD_1_2_5))
        ]
        for n in RESOLUTIONS:
            bounds = ladder(n).bounds
            rows.append(
                (
                    f"--buckets-per-decade {n}",
                    ladder(n).series,
                    lambda q, s, b=bounds: classic_quantile(q, s, b),
                )
            )
        rows.append(("native, schema 6", 1, native_quantile))
        for name, series, estimate in rows:
            errs = errors(sketches, estimate)
            sys.stdout.write(
                f"  {name:26} {series:4} series/timing: worst {max(errs) * 100:5.1f}%, "
                f"mean {statistics.mean(errs) * 100:4.1f}%\n"
            )
        if label == "demo":
            for name, sketch in sketches.items():
                p99 = sketch.quantile(0.99)
                assert p99 is not None
                old = classic_quantile(0.99, sketch, OLD_1_2_5)
                new = classic_quantile(0.99, sketch, ladder().bounds)
                sys.stdout.write(
                    f"    {name}: p99 {p99 / 1e6:.1f} ms, 1-2-5 {old * 1e3:.1f} ms, default ladder "
                    f"{new * 1e3:.1f} ms, native {native_quantile(0.99, sketch) * 1e3:.1f} ms "
                    f"({sketch.count} calls)\n"
                )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
