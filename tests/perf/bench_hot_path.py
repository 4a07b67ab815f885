"""Benchmark: the time perftop adds to one call, against other ways of timing a function.

Run by hand: `.venv/bin/python tests/perf/bench_hot_path.py`. In one process, each variant is called
300k times, 9 times over; the median loop gives the time per call, and "added" subtracts the bare call of
a no-op. The agent thread is running (recording starts it), as in an instrumented app.
"""

from __future__ import annotations

import datetime
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import perftop
from perftop.agent.recorder import Timing
from tests.perf._common import out

CALLS = 300_000
REPEATS = 9


def noop() -> None:
    pass


@perftop.time_it("bench.noop")
def timed_noop() -> None:
    pass


def with_timer() -> None:
    with perftop.timer("bench.timer"):
        pass


_minimal_buf: list[int] = []


def minimal(fn: Callable[[], None]) -> Callable[[], None]:
    """The floor: two perf_counter_ns and a list append."""
    pc = time.perf_counter_ns
    append = _minimal_buf.append

    def wrapper() -> None:
        t0 = pc()
        fn()
        append(pc() - t0)

    return wrapper


@dataclass
class _Sample:
    name: str
    at: datetime.datetime
    seconds: float


_naive_lock = threading.Lock()
_naive_samples: list[_Sample] = []


def naive(fn: Callable[[], None]) -> Callable[[], None]:
    """What a first attempt often looks like: a lock, a datetime and a dataclass per call."""

    def wrapper() -> None:
        start = time.perf_counter()
        fn()
        sample = _Sample(fn.__name__, datetime.datetime.now(), time.perf_counter() - start)
        with _naive_lock:
            _naive_samples.append(sample)

    return wrapper


class Nothing:
    """A class-based context manager that records nothing: the cost of `with` itself."""

    def __enter__(self) -> Nothing:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def with_nothing() -> None:
    with Nothing():
        pass


def measure(fn: Callable[[], None]) -> float:
    """Median seconds per call over REPEATS loops of CALLS calls."""
    runs = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(CALLS):
            fn()
        runs.append((time.perf_counter() - start) / CALLS)
        _minimal_buf.clear()
        _naive_samples.clear()
    return statistics.median(runs)


def main() -> None:
    variants: list[tuple[str, Callable[[], None]]] = [
        ("bare call of a no-op", noop),
        ("@perftop.time_it on a no-op", timed_noop),
        ("body `with perftop.timer(...): pass`", with_timer),
        ("minimal decorator (perf_counter_ns + list.append)", minimal(noop)),
        ("naive decorator (lock + datetime + dataclass)", naive(noop)),
        ("class-based context manager recording nothing", with_nothing),
    ]
    try:
        from prometheus_client import CollectorRegistry, Histogram

        histogram = Histogram("bench_seconds", "bench", registry=CollectorRegistry())
        variants.append(("prometheus_client Histogram.time() decorator", histogram.time()(noop)))
    except ImportError:
        pass
    results = {label: measure(fn) for label, fn in variants}
    base = results["bare call of a no-op"]
    out(f"{CALLS} calls x {REPEATS} repeats, median; python {sys.version.split()[0]}")
    out(f"{'variant':55} {'per call':>10} {'added':>10}")
    for label, per_call in results.items():
        out(f"{label:55} {per_call * 1e6:8.3f}us {(per_call - base) * 1e6:8.3f}us")
    out(f"agent-side aggregation, per recorded call: {aggregation_ns():.0f} ns (on the agent thread)")


def aggregation_ns() -> float:
    """What draining one recorded call costs the agent thread (it holds the GIL meanwhile)."""
    metric = Timing("bench.drain", time.time())
    for _ in range(CALLS):
        t0 = time.perf_counter_ns()
        metric.append(time.perf_counter_ns() - t0 + 150)
    runs = []
    for _ in range(REPEATS):
        values = list(metric.buf)
        start = time.perf_counter_ns()
        metric.drain(time.time())
        runs.append((time.perf_counter_ns() - start) / CALLS)
        metric.buf.extend(values)
    return statistics.median(runs)


if __name__ == "__main__":
    main()
