"""Benchmark: `Sketch.from_dict` (and the quantiles and merges it feeds) on realistic latency sketches.

Run by hand: `.venv/bin/python tests/perf/bench_sketch_decode.py [--against REV]`. The sketches are
lognormal latencies in nanoseconds, as an agent sends them: `to_dict()` through a JSON round trip, of a
few hundred bins (a typical endpoint) and about 2,000 (a very wide one, near MAX_BINS). Each figure is
the fastest of REPEATS loops (the least disturbed by other load) of the time per call in microseconds.
With --against, the same is timed with `perftop/wire/sketch.py` as of that git revision (loaded from
`git show`, as it imports the stdlib only), and the ratio this/old is printed; the decoded and merged
sketches' `to_dict()` and quantiles are checked equal. With --tick, also the viewer's tick on this tree:
CPU of `build_view` + `view_rows` for 8 workers x 40 timings (2,000 samples each) x 20 queries.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from perftop.wire import sketch as this_sketch
from tests.perf._common import ROOT, out

REPEATS = 7
QS = (0.5, 0.9, 0.99, 0.999)


def old_module(rev: str) -> ModuleType:
    """`perftop/wire/sketch.py` of git revision `rev`, loaded as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{rev}:perftop/wire/sketch.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_sketch.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_sketch", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_sketch"] = module
    spec.loader.exec_module(module)
    return module


def wire_sketch(mod: ModuleType, samples: int, sigma: float, seed: int) -> dict[str, Any]:
    """A JSON round trip of the sketch of `samples` lognormal latencies (median 2 ms) of spread `sigma`."""
    rng = random.Random(seed)
    sk = mod.Sketch()
    for _ in range(samples):
        sk.add(rng.lognormvariate(14.5, sigma))
    data: dict[str, Any] = json.loads(json.dumps(sk.to_dict()))
    return data


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    """Fastest of REPEATS loops of `calls` calls of `fn`, in microseconds per call."""
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append(time.perf_counter() - start)
    return min(times) / calls * 1e6


def measure(mod: ModuleType, data: dict[str, Any], other: dict[str, Any], calls: int) -> dict[str, float]:
    """Microseconds per decode, per quantiles (4 of them) of a decoded sketch, per copy of one (a merge
    into an empty sketch) and per copy and merge of another (overlapping bins, as workers' are)."""
    decoded = mod.Sketch.from_dict(data)
    second = mod.Sketch.from_dict(other)

    def copy_merge() -> None:
        decoded.copy().merge(second)

    return {
        "from_dict": per_call_us(lambda: mod.Sketch.from_dict(data), calls),
        "quantiles": per_call_us(lambda: decoded.quantiles(QS), calls),
        "copy": per_call_us(decoded.copy, calls),
        "copy+merge": per_call_us(copy_merge, calls),
    }


def worker_stats(pid: int) -> dict[str, Any]:
    """A worker's `stats` as the viewer receives them: 40 timings and 20 queries, each with its sketch."""
    rng = random.Random(pid)

    def sketch(samples: int, sigma: float) -> dict[str, Any]:
        sk = this_sketch.Sketch()
        for _ in range(samples):
            sk.add(rng.lognormvariate(14.5, sigma))
        data: dict[str, Any] = json.loads(json.dumps(sk.to_dict()))
        return data

    queries = []
    for k in range(20):
        sk = sketch(100, 0.5)
        n = sk["count"]
        queries.append(
            {"fingerprint": f"SELECT {k}", "dialect": "sqlite", "count": n, "rows": n, "rows_counted": n,
             "routes": ["GET /"], "n_plus_one": False, "sketch": sk}
        )  # fmt: skip
    return {
        "now": 1000.0 + pid,
        "window_s": None,
        "span_s": 10.0,
        "timings": {f"m{k:03}": {"sketch": sketch(2000, 0.8), "errors_by_type": {}} for k in range(40)},
        "queries": {"queries": queries, "slow_queries": [], "pool": None, "overflow": {}, "slow_ms": 100.0},
    }


def tick() -> None:
    """The viewer's tick on this tree: the fastest of 15, in CPU milliseconds."""
    from perftop.collectors.agent_view import build_view
    from perftop.collectors.rows import view_rows

    pids = list(range(301, 309))
    results = {p: worker_stats(p) for p in pids}
    infos = {p: {"pid": p, "name": "shop"} for p in pids}
    times = []
    for _ in range(15):
        started = time.process_time()
        view_rows(build_view(results, infos, None, pids[0]))
        times.append(time.process_time() - started)
    out(f"tick: build_view + view_rows, 8 workers x 40 timings x 20 queries: {min(times) * 1e3:.1f} ms CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="a git revision to compare with (e.g. main)")
    parser.add_argument("--tick", action="store_true", help="also time the viewer's tick (this tree)")
    args = parser.parse_args()
    old = old_module(args.against) if args.against else None
    cases = (("typical", 20_000, 0.8), ("wide", 200_000, 5.0))
    for label, samples, sigma in cases:
        data = wire_sketch(this_sketch, samples, sigma, seed=1)
        other = wire_sketch(this_sketch, samples, sigma, seed=2)
        calls = max(20, 60_000 // len(data["bins"]))
        mine = measure(this_sketch, data, other, calls)
        out(f"{label}: {len(data['bins'])} bins, {data['count']} values")
        theirs = measure(old, data, other, calls) if old is not None else None
        if old is not None:
            a, b = this_sketch.Sketch.from_dict(data), old.Sketch.from_dict(data)
            a.merge(this_sketch.Sketch.from_dict(other))
            b.merge(old.Sketch.from_dict(other))
            same = a.to_dict() == b.to_dict() and a.quantiles(QS) == b.quantiles(QS)
            out(f"  same to_dict() and quantiles (decoded, merged) as {args.against}: {same}")
        for what, us in mine.items():
            line = f"  {what:<11} {us:9.1f} us"
            if theirs is not None:
                line += f"   {args.against}: {theirs[what]:9.1f} us   ratio {us / theirs[what]:.2f}"
            out(line)
    if args.tick:
        tick()


if __name__ == "__main__":
    main()
