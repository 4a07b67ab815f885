"""Benchmark: quantile accuracy end to end, and memory per metric.

Run by hand: `.venv/bin/python tests/perf/bench_accuracy.py`. A target process started with the agent
observes 1M samples of a lognormal and of a bimodal distribution through `perftop.observe`; the figures
are read back through the socket and `timing_rows`, and compared with numpy's nearest-rank quantiles
(`method="inverted_cdf"`, rank ceil(q * n)) of the same samples. Then 4 forked worker processes observe
250k samples each and their stats are merged (`find_child_agents` + `merge_stats`). Then small samples
(2 to 100 values), where a quantile definition shows most. Last, in this process, tracemalloc measures
what one metric holds after 1M samples.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import perftop
from perftop.agent.recorder import Timing, registry
from perftop.collectors.agent_client import (
    QUANTILES,
    AgentClient,
    find_child_agents,
    merge_stats,
    timing_rows,
)
from perftop.wire.sketch import Sketch, Windows
from tests.helpers import short_tmp_dir, wait_for
from tests.perf._common import out
from tests.targets.agent_harness import Target
from tests.targets.agent_target import samples

N = 1_000_000
WORKERS = 4
SMALL = (2, 3, 10, 20, 100)


def exact(values: list[float], q: float) -> float:
    """numpy's nearest rank: the value at rank ceil(q * n)."""
    return float(np.quantile(np.asarray(values), q, method="inverted_cdf"))


def errors(row: dict[str, float], values: list[float]) -> tuple[float, int]:
    """The worst relative error of the row's quantiles, and how many fall outside the exact [min, max]."""
    worst, outside = 0.0, 0
    low, high = min(values), max(values)
    for key, q in QUANTILES:
        got, want = row[key], exact(values, q)
        worst = max(worst, abs(got - want) / want)
        outside += not low * (1 - 1e-12) <= got <= high * (1 + 1e-12)
    return worst, outside


def report(label: str, row: dict[str, float], values: list[float]) -> float:
    out(f"{label}: count {row['count']} (expected {len(values)})")
    for key, q in (("min_ms", 0.0), *QUANTILES, ("max_ms", 1.0)):
        want = exact(values, q)
        got = row[key]
        err = abs(got - want) / want
        out(f"  {key:8} sketch {got:10.4f} ms  exact {want:10.4f} ms  relative error {err * 100:.3f}%")
    worst, outside = errors(row, values)
    out(f"  quantiles outside the exact [min, max]: {outside}")
    return worst


def small_samples() -> float:
    """Worst relative error over many small samples, each recorded by the agent's recorder in-process."""
    worst, outside, cases = 0.0, 0, 0
    for dist in ("lognormal", "bimodal"):
        for n in SMALL:
            for seed in range(200):
                values = samples(dist, seed, n)
                metric = Timing("small", 0.0)
                metric.buf.extend(ms * 1e6 for ms in values)
                metric.drain(0.5)
                sketch, span = metric.windows.window(None, 1.0)
                stats = {"span_s": span, "timings": {"small": {"sketch": sketch.to_dict()}}}
                err, bad = errors(timing_rows(stats)["small"], values)
                worst, outside, cases = max(worst, err), outside + bad, cases + 1
    out(
        f"small samples ({cases} of n in {SMALL}): worst relative error {worst * 100:.3f}%, {outside} outside"
    )
    return worst


def stats_of(path: str) -> dict[str, object]:
    with AgentClient(path, timeout=30) as client:
        result: dict[str, object] = client.call("stats")
        return result


def main() -> None:
    worst = 0.0
    with short_tmp_dir() as tmp, Target(os.path.join(tmp, "socks")) as target:
        for dist in ("lognormal", "bimodal"):
            started = time.perf_counter()
            assert target.cmd(f"samples {dist} 7 {N}", timeout=300) == f"done {N}"
            elapsed = time.perf_counter() - started
            row = timing_rows(stats_of(target.socket))[dist]
            worst = max(
                worst, report(f"{dist}, 1 process ({elapsed:.1f} s to observe)", row, samples(dist, 7, N))
            )
        line = target.cmd(f"workers {WORKERS} lognormal {N // WORKERS}", timeout=60)
        pids = [int(p) for p in line.split()[1:]]
        target.children.extend(pids)

        def all_done() -> list[dict[str, object]] | None:
            agents = find_child_agents(target.pid, target.socket_dir)
            if len(agents) < WORKERS:
                return None
            results = [stats_of(path) for path in agents.values()]
            counts = [timing_rows(r).get("lognormal", {}).get("count", 0) for r in results]
            return results if all(c == N // WORKERS for c in counts) else None

        results = wait_for(all_done, timeout=300, interval=0.5)
        merged = merge_stats(results)
        union = [v for i in range(WORKERS) for v in samples("lognormal", i, N // WORKERS)]
        worst = max(
            worst,
            report(f"lognormal, {WORKERS} worker processes merged", timing_rows(merged)["lognormal"], union),
        )
    worst = max(worst, small_samples())
    out(f"worst relative error: {worst * 100:.3f}% (promised: <= 1%)")

    # Memory: what one metric holds once 1M samples are aggregated (the windows: at most 41 sketches).
    values = samples("lognormal", 11, N)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for ms in values:
        perftop.observe("memory.probe", ms)
    registry.flush()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    bins = len(registry.timings["memory.probe"].windows.total.bins)
    out(f"memory per metric after {N} samples in ~1 s: {grown / 1024:.1f} KiB (total sketch: {bins} bins)")

    # Worst case: the same samples spread over 5 minutes, so that all 41 sketches of the rings are full.
    t0 = 1_000_000.0
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    windows = Windows(started_at=t0)
    per_second = N // 300
    for s in range(300):
        sketch = Sketch()
        for ms in values[s * per_second : (s + 1) * per_second]:
            sketch.add(ms * 1e6)
        windows.add_sketch(t0 + s, sketch)
        del sketch
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    out(f"memory per metric with every window slot filled (41 sketches): {grown / 1024:.1f} KiB")


if __name__ == "__main__":
    main()
