"""Quantiles against numpy's nearest rank (`method="inverted_cdf"`), at every stage they pass through.

The oracle is `np.quantile(x, q, method="inverted_cdf")`: the value at rank ceil(q * n), as HdrHistogram
and Prometheus summaries answer. Every answer must be within the sketch's 1% of it, and never outside
the exact [min, max] of the values. The stages: one sketch; sketches of several workers merged after a
trip through JSON (`merge_stats`, `timing_rows`); the recorder's sliding windows (10 s, 1 min, 5 min and
since start) built from its per-second drains; the Prometheus exporter's summaries; and end to end, a real
agent process that `perftop.observe`s known values, read back with `perftop snapshot --pid PID --json`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perftop.agent.recorder import Timing
from perftop.collectors.agent_client import QUANTILES, merge_queries, merge_stats, timing_rows
from perftop.collectors.agent_view import build_view
from perftop.export.prometheus import QUANTILES as EXPORT_QUANTILES
from perftop.export.prometheus import digest_sketch
from perftop.wire.sketch import Sketch, nearest_rank
from tests.helpers import perftop_json, short_tmp_dir, wait_for
from tests.targets.agent_harness import ROOT, Target
from tests.targets.agent_target import samples

QS = (0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0)
NS_PER_MS = 1e6
T0 = 1_000_000.0
"""A start time on a 10 s boundary, so the coarse slots line up with whole tens of seconds."""


def oracle(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    """numpy's nearest-rank quantiles of `values`."""
    return [float(v) for v in np.quantile(np.asarray(values, dtype=float), list(qs), method="inverted_cdf")]


def check(got: Sequence[float | None], values: Sequence[float], qs: Sequence[float], what: str) -> None:
    """Each answer within 1% of numpy's, within [min, max], and the extreme ranks exactly min and max."""
    low, high = min(values), max(values)
    n = len(values)
    for q, g, want in zip(qs, got, oracle(values, qs), strict=True):
        assert g is not None, f"{what}: q={q} missing"
        assert abs(g - want) <= 0.01 * want, f"{what}: q={q} n={n}: {g} vs numpy {want}"
        assert low <= g <= high, f"{what}: q={q} n={n}: {g} outside [{low}, {high}]"
        rank = math.ceil(q * n)
        if rank <= 1:
            assert g == low, f"{what}: q={q} n={n}: rank 1 is the exact min {low}, not {g}"
        if rank >= n:
            assert g == high, f"{what}: q={q} n={n}: rank n is the exact max {high}, not {g}"


def sketch_of(values: Sequence[float]) -> Sketch:
    sk = Sketch()
    for v in values:
        sk.add(v)
    return sk


def lognormal(n: int, seed: int) -> list[float]:
    """Skewed durations in ns: median ~0.4 ms, a long right tail."""
    return [float(v) for v in np.random.default_rng(seed).lognormal(13.0, 1.5, n)]


def bimodal(n: int, seed: int) -> list[float]:
    """90% fast (~0.2 ms) and 10% slow (~50 ms) durations in ns."""
    rng = np.random.default_rng(seed)
    fast = np.abs(rng.normal(2e5, 2e4, n))
    slow = np.abs(rng.normal(5e7, 5e6, n))
    return [float(v) for v in np.where(rng.random(n) < 0.9, fast, slow)]


durations = st.one_of(
    st.floats(min_value=1.0, max_value=1e12, allow_nan=False, allow_infinity=False),
    st.integers(min_value=0, max_value=10**12).map(float),
    st.sampled_from([0.0, 1.0, 100.0, 200.0, 1e6, 1e9]),
)
"""Timings in ns: 0 (a timer can read 0), 1 ns to 16 min, with repeats likely."""
quantile_levels = st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=8)


# -- the rank itself, exactly ----------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=10**6), st.floats(min_value=0.0, max_value=1.0))
def test_nearest_rank_is_numpys_inverted_cdf(n: int, q: float) -> None:
    # On 0, 1, ..., n - 1 numpy answers the 0-based rank itself.
    want = np.quantile(np.arange(n), q, method="inverted_cdf")
    assert nearest_rank(q, n) - 1 == want


@pytest.mark.parametrize("n", [1, 2, 3, 10, 20, 100, 1000, 10**6])
def test_nearest_rank_of_the_usual_levels(n: int) -> None:
    for q in (*QS, 0.3, 0.7, 0.9999):
        assert nearest_rank(q, n) - 1 == np.quantile(np.arange(n), q, method="inverted_cdf")


# -- the examples of issue 11 ----------------------------------------------------------------------------


def test_small_samples_reach_their_tail() -> None:
    ten = sketch_of([float(v) for v in range(1, 11)])
    p50, p90, p95, p99, p999 = ten.quantiles((0.5, 0.9, 0.95, 0.99, 0.999))
    assert p95 == p99 == p999 == 10.0  # was 8.96 with the max at 10
    assert p50 == pytest.approx(5.0, rel=0.01) and p90 == pytest.approx(9.0, rel=0.01)
    two = sketch_of([100.0, 200.0])
    assert two.quantiles((0.5, 0.9, 0.99, 0.999)) == [100.0, 200.0, 200.0, 200.0]  # was 100 throughout
    twenty = sketch_of([float(v) for v in range(10, 210, 10)])
    assert twenty.quantile(0.99) == 200.0  # 20 requests: the p99 is the slowest one
    assert twenty.quantile(0.95) == pytest.approx(190.0, rel=0.01)


# -- one sketch ------------------------------------------------------------------------------------------


@settings(deadline=None)
@given(st.lists(durations, min_size=1, max_size=2000), quantile_levels)
def test_one_sketch_matches_numpy(values: list[float], qs: list[float]) -> None:
    sk = sketch_of(values)
    check(sk.quantiles([*QS, *qs]), values, [*QS, *qs], "sketch")
    assert sk.min == min(values) and sk.max == max(values)


@pytest.mark.parametrize("make", [lognormal, bimodal])
@pytest.mark.parametrize("n", [1, 2, 5, 19, 20, 21, 100, 1001, 100_000])
def test_skewed_and_bimodal_samples(make: Any, n: int) -> None:
    values = make(n, seed=n)
    check(sketch_of(values).quantiles(QS), values, QS, f"{make.__name__} n={n}")


@pytest.mark.parametrize("make", [lognormal, bimodal])
def test_a_million_values_through_the_recorder(make: Any) -> None:
    values = make(10**6, seed=42)
    metric = Timing("big", T0)
    metric.buf.extend(values)
    metric.drain(T0 + 0.5)
    sketch, _ = metric.windows.window(None, T0 + 0.9)
    assert sketch.count == 10**6
    check(sketch.quantiles(QS), values, QS, f"{make.__name__} 1e6")


# -- merged across workers, through the wire form --------------------------------------------------------


def rows_of(stats: dict[str, Any], name: str) -> dict[str, Any]:
    """The `timings` row of `name`, after a trip of the stats through JSON (what the socket carries)."""
    row: dict[str, Any] = timing_rows(json.loads(json.dumps(stats)))[name]
    return row


def check_row(row: dict[str, Any], values_ns: Sequence[float], what: str) -> None:
    """A `timings` row (ms) against numpy on the values (ns): count, quantiles, min and max."""
    assert row["count"] == len(values_ns), what
    values_ms = [v / NS_PER_MS for v in values_ns]
    keys = [key for key, _q in QUANTILES]
    check(
        [row["min_ms"], *(row[k] for k in keys), row["max_ms"]],
        values_ms,
        [0.0, *(q for _k, q in QUANTILES), 1.0],
        what,
    )


def worker_stats(sketch: Sketch) -> dict[str, Any]:
    return {"span_s": 10.0, "timings": {"t": {"sketch": sketch.to_dict(), "errors_by_type": {}}}}


@settings(deadline=None)
@given(st.lists(st.lists(durations, max_size=300), min_size=2, max_size=6))
def test_workers_merged_match_numpy_on_the_union(parts: list[list[float]]) -> None:
    union = [v for part in parts for v in part]
    if not union:
        return
    merged = merge_stats([worker_stats(sketch_of(part)) for part in parts])
    check_row(rows_of(merged, "t"), union, f"{len(parts)} workers")


@pytest.mark.parametrize("make", [lognormal, bimodal])
def test_four_workers_of_a_quarter_million_each(make: Any) -> None:
    parts = [make(250_000, seed=s) for s in range(4)]
    merged = merge_stats([worker_stats(sketch_of(part)) for part in parts])
    check_row(rows_of(merged, "t"), [v for part in parts for v in part], f"{make.__name__} 4 x 250k")


# -- the recorder's sliding windows ----------------------------------------------------------------------


def in_window(second: int, now: float, window: float | None) -> bool:
    """Whether a value drained during `second` (after T0) is in `window` at `now`: the window's whole
    slots, 1 s wide for up to 10 s (10 of them), 10 s wide beyond (30 of them)."""
    if window is None:
        return True
    width, ring = (1, 10) if window <= 10 else (10, 30)
    last = math.floor(now / width)
    slots = min(math.ceil(window / width), ring)
    return math.floor((T0 + second + 0.5) / width) >= last - slots + 1


workers_timelines = st.lists(
    st.lists(st.tuples(st.integers(min_value=0, max_value=400), durations), min_size=1, max_size=150),
    min_size=1,
    max_size=3,
)


@settings(deadline=None, max_examples=60)
@given(workers_timelines, st.integers(min_value=0, max_value=40))
def test_windows_of_several_workers_match_numpy(timelines: list[list[tuple[int, float]]], idle: int) -> None:
    last = max(second for events in timelines for second, _v in events)
    now = T0 + last + idle + 0.75
    metrics = []
    for events in timelines:
        metric = Timing("t", T0)
        for second in sorted({s for s, _v in events}):
            metric.buf.extend(v for s, v in events if s == second)
            metric.drain(T0 + second + 0.5)
        metrics.append(metric)
    for window in (1, 10, 60, 300, None):
        stats = []
        for metric in metrics:
            sketch, _span = metric.windows.window(window, now)
            stats.append(worker_stats(sketch))
        want = [v for events in timelines for s, v in events if in_window(s, now, window)]
        row = rows_of(merge_stats(stats), "t")
        if want:
            check_row(row, want, f"window {window}")
        else:
            assert row["count"] == 0 and row["p99_ms"] is None and row["max_ms"] is None


# -- GC pauses and SQL queries: the other figures read from sketches --------------------------------------


@settings(deadline=None, max_examples=50)
@given(
    st.lists(
        st.tuples(st.lists(durations, max_size=50), st.lists(durations, max_size=50)), min_size=1, max_size=3
    )
)
def test_gc_pause_p99_of_merged_workers(workers: list[tuple[list[float], list[float]]]) -> None:
    results = {}
    for pid, (gen0, gen2) in enumerate(workers, start=100):
        timings = {
            name: {"sketch": sketch_of(values).to_dict(), "errors_by_type": {}}
            for name, values in (("gc.gen0", gen0), ("gc.gen2", gen2))
        }
        gc = {"collections": [len(gen0), 0, len(gen2)], "collected": [0, 0, 0], "uncollectable": 0}
        results[pid] = json.loads(json.dumps({"span_s": 1.0, "timings": timings, "gc": gc}))
    view = build_view(results, {pid: {"pid": pid} for pid in results}, None, 100)
    pauses = [v / NS_PER_MS for gen0, gen2 in workers for v in gen0 + gen2]
    gc_json = view.to_json()["gc"]
    if pauses:
        check([gc_json["pause_p99_ms"], gc_json["pause_max_ms"]], pauses, [0.99, 1.0], "gc pauses")
    else:
        assert gc_json["pause_p99_ms"] is None and gc_json["pause_max_ms"] is None


@settings(deadline=None, max_examples=50)
@given(st.lists(st.lists(durations, min_size=1, max_size=100), min_size=1, max_size=3))
def test_sql_query_figures_of_merged_workers(parts: list[list[float]]) -> None:
    rows = [{"fingerprint": "SELECT ?", "sketch": sketch_of(part).to_dict()} for part in parts]
    merged = merge_queries([{"queries": [row]} for row in json.loads(json.dumps(rows))])
    (row,) = merged["queries"]
    union = [v / NS_PER_MS for part in parts for v in part]
    check([row["p50_ms"], row["p95_ms"], row["p99_ms"], row["max_ms"]], union, [0.5, 0.95, 0.99, 1.0], "sql")


# -- the Prometheus exporter -----------------------------------------------------------------------------


@settings(deadline=None)
@given(st.lists(durations, min_size=1, max_size=500))
def test_export_summaries_are_the_sketch_quantiles(values: list[float]) -> None:
    sk = sketch_of(values)
    digest = digest_sketch(json.loads(json.dumps(sk.to_dict())))
    assert digest.quantiles == [v / 1e9 for v in sk.quantiles(EXPORT_QUANTILES) if v is not None]
    check(digest.quantiles, [v / 1e9 for v in values], EXPORT_QUANTILES, "export (seconds)")


# -- end to end: a real agent, read back with `perftop snapshot` -------------------------------------------


def snapshot(target: Target, *extra: str) -> dict[str, Any]:
    env = {**os.environ, "PERFTOP_SOCKET_DIR": target.socket_dir}
    args = ("snapshot", "--pid", str(target.pid), "--interval", "0.05", *extra, "--json")
    doc: dict[str, Any] = perftop_json(*args, env=env, cwd=ROOT)
    return doc


def check_ms_row(row: dict[str, Any], values_ms: Sequence[float], what: str) -> None:
    """A snapshot row against numpy on the observed milliseconds. The agent holds ns (ms * 1e6) and the
    row ms again (ns / 1e6): min and max come back within a rounding of the float, and every quantile
    within the row's own exact [min_ms, max_ms]."""
    assert row["count"] == len(values_ms), what
    assert row["min_ms"] == pytest.approx(min(values_ms), rel=1e-12), what
    assert row["max_ms"] == pytest.approx(max(values_ms), rel=1e-12), what
    for (key, _q), want in zip(QUANTILES, oracle(values_ms, [q for _k, q in QUANTILES]), strict=True):
        got = row[key]
        assert abs(got - want) <= 0.01 * want, f"{what}: {key} {got} vs numpy {want}"
        assert row["min_ms"] <= got <= row["max_ms"], f"{what}: {key} {got} outside [min, max]"


def test_end_to_end_snapshot_of_a_real_agent() -> None:
    small = {
        "ten": [float(v) for v in range(1, 11)],
        "two": [100.0, 200.0],
        "twenty": [float(v) for v in range(10, 210, 10)],
        "one": [7.25],
    }
    n, workers, per_worker = 20_000, 3, 5_000
    with short_tmp_dir() as tmp, Target(f"{tmp}/socks") as target:
        for name, values in small.items():
            for ms in values:
                assert target.cmd(f"observe {name} {ms!r}") == "done"
        for dist in ("lognormal", "bimodal"):
            assert target.cmd(f"samples {dist} 7 {n}", timeout=120) == f"done {n}"
        line = target.cmd(f"workers {workers} lognormal {per_worker}", timeout=60)
        target.children.extend(int(p) for p in line.split()[1:])
        expected = {
            **small,
            "lognormal": samples("lognormal", 7, n)
            + [v for i in range(workers) for v in samples("lognormal", i, per_worker)],
            "bimodal": samples("bimodal", 7, n),
        }

        def complete() -> dict[str, Any] | None:
            doc = snapshot(target)
            counts = {name: row["count"] for name, row in doc["timings"].items()}
            return doc if all(counts.get(k) == len(v) for k, v in expected.items()) else None

        doc = wait_for(complete, timeout=120, interval=0.5)
        # The 5 min window (thirty 10 s sketches merged, in each process) holds all of it too.
        windowed = snapshot(target, "--window", "300")["timings"]
    assert len(doc["agent"]["merged_pids"]) == workers + 1
    timings = doc["timings"]
    for name, values in expected.items():
        check_ms_row(timings[name], values, name)
        check_ms_row(windowed[name], values, f"{name}, 5 min window")
    assert timings["ten"]["p95_ms"] == timings["ten"]["p99_ms"] == timings["ten"]["max_ms"]
    assert timings["two"]["p99_ms"] == timings["two"]["max_ms"] == pytest.approx(200.0, rel=1e-12)
    assert timings["two"]["p50_ms"] == timings["two"]["min_ms"] == pytest.approx(100.0, rel=1e-12)
    assert timings["twenty"]["p99_ms"] == timings["twenty"]["max_ms"]
    assert all(timings["one"][key] == timings["one"]["max_ms"] for key, _q in QUANTILES)
