"""Recording of timings, counters and gauges inside the monitored app. Standard library only.

The hot path is a list append: each metric owns one plain list, and a timed call appends its duration
(an int of nanoseconds from two `time.perf_counter_ns()` calls) to it. No lock, no formatting, no object
beyond the int. The agent thread drains every list a few times a second: it copies the first n items
and deletes exactly those n (both atomic list operations, also on free-threaded builds), so an append
that races the drain simply lands after them and is taken next time; no count is ever lost. The copy is
aggregated with `collections.Counter` (C speed; fast calls give few distinct nanosecond values) into the
metric's `Windows` of sketches. Failed calls take a separate, rarer path that also records the
exception type.

Metric objects live as long as the process: decorators resolve theirs once, at decoration time. The
number of distinct names is capped; names past the cap fold into one metric named `perftop.overflow`,
and how many names and calls went there is reported.

Pending buffers are bounded whatever happens to the agent thread (stuck, dead, or unable to run): past
`MAX_PENDING` values a call is dropped and counted (`pending_dropped`), so memory never grows without
bound. The check is one `len()` on the hot path.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast, overload

from perftop.agent.pump import TICK_S, log_once, pump
from perftop.wire.sketch import Sketch, SumWindows, Windows, window_span

OVERFLOW_NAME = "perftop.overflow"
"""Where metrics past the cardinality cap are recorded."""
DEFAULT_MAX_METRICS = 1000
MAX_ERROR_TYPES = 32
"""Distinct exception type names kept per metric; the rest count under `other`."""
MAX_PENDING = 1 << 20
"""Values waiting for the agent thread, per metric buffer, beyond which calls are dropped and counted: at
most ~36 MB per metric, and more than one second of the fastest recording the interpreter allows, so a
live agent thread (draining five times a second) never reaches it."""
MAX_DROPPED_NAMES_KEPT = 10_000
"""Dropped names remembered to count them distinctly; past this, each further drop counts as new."""

_pc = time.perf_counter_ns

F = TypeVar("F", bound=Callable[..., Any])


def _is_number(value: object) -> bool:
    return (type(value) is int) or (isinstance(value, (int, float)) and math.isfinite(value))


class Timing:
    """One timed metric: its pending durations (ns), its windows of sketches and its errors by type."""

    __slots__ = ("append", "buf", "dropped", "errbuf", "errors_by_type", "invalid", "name", "windows")

    def __init__(self, name: str, started_at: float) -> None:
        self.name = name
        self.buf: list[Any] = []
        """Durations in ns not yet aggregated. Only ever appended to (app threads) and drained from the
        front (agent thread), never replaced, so `append` stays bound to it."""
        self.append = self.buf.append
        self.errbuf: list[tuple[Any, str]] = []
        """(duration ns, exception type name) of failed calls not yet aggregated."""
        self.windows = Windows(started_at)
        self.errors_by_type: dict[str, int] = {}
        """Since start (or since the fork that created this process)."""
        self.invalid = 0
        """Observed values that were not finite numbers, dropped."""
        self.dropped = 0
        """Calls not recorded because the pending buffer was full (the agent thread did not drain it)."""

    def error(self, duration: int | float, exc: BaseException) -> None:
        """Record a failed call (the rare path): its duration and the exception's type name."""
        # Never let bookkeeping replace the app's exception.
        with contextlib.suppress(Exception):
            if len(self.errbuf) < MAX_PENDING:
                self.errbuf.append((duration, type(exc).__name__))
            else:
                self.dropped += 1

    def drain(self, now: float) -> None:
        """Aggregate everything appended so far into the windows (under the registry's drain lock)."""
        buf = self.buf
        n = len(buf)
        if n:
            chunk = buf[:n]
            del buf[:n]
            sketch = Sketch()
            try:
                counts: collections.Counter[Any] = collections.Counter(chunk)
            except TypeError:
                counts = collections.Counter(v for v in chunk if _is_number(v))
            for value, k in counts.items():
                if type(value) is int:
                    sketch.add(value if value > 0 else 0, k)
                elif _is_number(value):
                    sketch.add(max(float(value), 0.0), k)
                else:
                    self.invalid += k
            self.windows.add_sketch(now, sketch)
        errbuf = self.errbuf
        n = len(errbuf)
        if n:
            failed = errbuf[:n]
            del errbuf[:n]
            by_type = self.errors_by_type
            for duration, type_name in failed:
                self.windows.add(now, max(duration, 0), 1, 1)
                if type_name not in by_type and len(by_type) >= MAX_ERROR_TYPES:
                    type_name = "other"
                by_type[type_name] = by_type.get(type_name, 0) + 1

    def reset(self, started_at: float) -> None:
        """Forget everything (a forked child starts empty); `append` stays valid."""
        del self.buf[:]
        del self.errbuf[:]
        self.windows = Windows(started_at)
        self.errors_by_type = {}
        self.invalid = 0
        self.dropped = 0


class CounterMetric:
    """One counter: pending increments, the value since start, and sums over windows for rates."""

    __slots__ = ("append", "buf", "calls", "dropped", "invalid", "name", "sums")

    def __init__(self, name: str, started_at: float) -> None:
        self.name = name
        self.buf: list[Any] = []
        self.append = self.buf.append
        self.sums = SumWindows(started_at)
        self.calls = 0
        self.invalid = 0
        self.dropped = 0

    def drain(self, now: float) -> None:
        buf = self.buf
        n = len(buf)
        if not n:
            return
        chunk = buf[:n]
        del buf[:n]
        try:
            total = sum(chunk)
            valid = type(total) in (int, float) and math.isfinite(total)
        except TypeError:
            valid = False
        if not valid:
            good = [v for v in chunk if _is_number(v)]
            self.invalid += n - len(good)
            total = sum(good)
        self.calls += n
        self.sums.add(now, total)

    def reset(self, started_at: float) -> None:
        del self.buf[:]
        self.sums = SumWindows(started_at)
        self.calls = 0
        self.invalid = 0
        self.dropped = 0


class Gauge:
    """One gauge: the last value set (validated when read, not when set)."""

    __slots__ = ("name", "value")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value: Any = None


def _default_max_metrics() -> int:
    raw = os.environ.get("PERFTOP_MAX_METRICS", "")
    try:
        value = int(raw) if raw else DEFAULT_MAX_METRICS
    except ValueError:
        log_once(
            "max-metrics-env", f"PERFTOP_MAX_METRICS={raw!r} is not an integer; using {DEFAULT_MAX_METRICS}"
        )
        value = DEFAULT_MAX_METRICS
    return max(1, value)


class Registry:
    """Every metric of the process, by kind and name, with the cardinality cap.

    The dicts are read without a lock on the hot path (a dict lookup is atomic); creating a metric takes
    the lock, which only happens once per name.
    """

    def __init__(self, max_metrics: int | None = None) -> None:
        self.lock = threading.Lock()
        self.drain_lock = threading.Lock()
        """Serialises draining and reading the windows: the agent thread does both, but `flush()` may also
        be called from elsewhere (tests, shutdown), and two drains of one buffer would lose values."""
        self.started_at = time.time()
        self.max_metrics = max_metrics if max_metrics is not None else _default_max_metrics()
        self.timings: dict[str, Timing] = {}
        self.counters: dict[str, CounterMetric] = {}
        self.gauges: dict[str, Gauge] = {}
        self._names: set[str] = set()
        """Distinct user metric names across kinds: what the cap counts. Internal names are not in it."""
        self._dropped: set[str] = set()
        self._dropped_extra = 0
        self.gauge_sets_dropped = 0
        self._started_thread = False

    def _admit(self, name: str, internal: bool) -> bool:
        """Whether `name` may become a new metric (lock held); counts it as dropped if not."""
        if internal or name in self._names:
            return True
        if len(self._names) < self.max_metrics:
            self._names.add(name)
            return True
        if name not in self._dropped:
            if len(self._dropped) < MAX_DROPPED_NAMES_KEPT:
                self._dropped.add(name)
            else:
                self._dropped_extra += 1
        return False

    def _created(self) -> None:
        """After a metric is created (outside the lock): make sure the agent thread drains the buffers,
        so that recording before `start()` (or without it) stays bounded."""
        if not self._started_thread:
            self._started_thread = True
            try:
                pump.wait_started()
                pump.ensure_running()
            except Exception as exc:
                log_once("agent-thread", "could not start the agent thread", exc=exc)

    def timing(self, name: str, internal: bool = False) -> Timing:
        """The timing metric of `name`, created if new (or the overflow metric past the cap)."""
        with self.lock:
            metric = self.timings.get(name)
            if metric is None:
                if not self._admit(name, internal):
                    name = OVERFLOW_NAME
                    metric = self.timings.get(name)
                if metric is None:
                    metric = Timing(name, self.started_at)
                    self.timings[name] = metric
        self._created()
        return metric

    def counter(self, name: str) -> CounterMetric:
        with self.lock:
            metric = self.counters.get(name)
            if metric is None:
                if not self._admit(name, False):
                    name = OVERFLOW_NAME
                    metric = self.counters.get(name)
                if metric is None:
                    metric = CounterMetric(name, self.started_at)
                    self.counters[name] = metric
        self._created()
        return metric

    def gauge(self, name: str) -> Gauge | None:
        """The gauge of `name`, or None past the cap (a mix of unrelated gauges means nothing)."""
        with self.lock:
            metric = self.gauges.get(name)
            if metric is None:
                if not self._admit(name, False):
                    self.gauge_sets_dropped += 1
                    return None
                metric = Gauge(name)
                self.gauges[name] = metric
        return metric

    def flush(self) -> None:
        """Aggregate every pending value (the agent thread calls this a few times a second)."""
        with self.drain_lock:
            now = time.time()
            for metric in list(self.timings.values()):
                try:
                    metric.drain(now)
                except Exception as exc:
                    log_once("drain", f"could not aggregate metric {metric.name!r}", exc=exc)
            for counter in list(self.counters.values()):
                try:
                    counter.drain(now)
                except Exception as exc:
                    log_once("drain", f"could not aggregate counter {counter.name!r}", exc=exc)

    def overflow(self) -> dict[str, int]:
        """What the cardinality cap dropped: distinct names, and calls recorded under the overflow name."""
        calls = 0
        over_t = self.timings.get(OVERFLOW_NAME)
        if over_t is not None:
            calls += over_t.windows.total.count
        over_c = self.counters.get(OVERFLOW_NAME)
        if over_c is not None:
            calls += over_c.calls
        timings, counters = list(self.timings.values()), list(self.counters.values())
        invalid = sum(m.invalid for m in timings) + sum(c.invalid for c in counters)
        pending_dropped = sum(m.dropped for m in timings) + sum(c.dropped for c in counters)
        return {
            "max_metrics": self.max_metrics,
            "metrics": len(self._names),
            "metrics_dropped": len(self._dropped) + self._dropped_extra,
            "calls_dropped": calls + self.gauge_sets_dropped,
            "invalid_values": invalid,
            "pending_dropped": pending_dropped,
        }

    def timings_stats(self, window: float | None, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with self.drain_lock:
            for name, metric in list(self.timings.items()):
                if metric.windows.total.count == 0:
                    continue
                sketch, _ = metric.windows.window(window, now)
                out[name] = {"sketch": sketch.to_dict(), "errors_by_type": dict(metric.errors_by_type)}
        return out

    def counters_stats(self, window: float | None, now: float, span: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        with self.drain_lock:
            for name, counter in list(self.counters.items()):
                if counter.calls == 0:
                    continue
                in_window = counter.sums.window(window, now)
                out[name] = {"value": counter.sums.total, "rate_per_s": in_window / span}
        return out

    def gauges_stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, metric in list(self.gauges.items()):
            value = metric.value
            if value is not None and _is_number(value):
                out[name] = float(value)
        return out

    def history(self, name: str, fine: bool) -> list[list[Any]] | None:
        """[[slot start, sketch dict], ...] of a timing, oldest first; None if there is no such timing."""
        metric = self.timings.get(name)
        if metric is None:
            return None
        with self.drain_lock:
            return [[start, sk.to_dict()] for start, sk in metric.windows.history(time.time(), fine)]

    def span(self, window: float | None, now: float) -> float:
        """The time a window covers (what rates divide by), with `Windows.window`'s rules."""
        return window_span(window, now, self.started_at)

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock and empty state; metric objects stay (decorators hold them)."""
        self.lock = threading.Lock()
        self.drain_lock = threading.Lock()
        self.started_at = time.time()
        for metric in list(self.timings.values()):
            metric.reset(self.started_at)
        for counter in list(self.counters.values()):
            counter.reset(self.started_at)
        for gauge in list(self.gauges.values()):
            gauge.value = None
        self._started_thread = False


registry = Registry()
"""The process's one registry."""
_timings = registry.timings
_counters = registry.counters
_gauges = registry.gauges
_timings_get = _timings.get


def _timing_slow(name: Any) -> Timing:
    try:
        return _timings.get(name) or registry.timing(str(name))
    except TypeError:
        return registry.timing(str(name))


def _counter_slow(name: Any) -> CounterMetric:
    try:
        return _counters.get(name) or registry.counter(str(name))
    except TypeError:
        return registry.counter(str(name))


def _wrap(fn: Callable[..., Any], metric: Timing) -> Callable[..., Any]:
    append = metric.append
    buf = metric.buf
    error = metric.error
    pc = _pc

    if inspect.iscoroutinefunction(fn):
        coro_fn = cast(Callable[..., Awaitable[Any]], fn)

        @functools.wraps(fn)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            t0 = pc()
            try:
                result = await coro_fn(*args, **kwargs)
            except BaseException as exc:
                error(pc() - t0, exc)
                raise
            duration = pc() - t0
            if len(buf) < 1 << 20:  # MAX_PENDING, folded to a constant: ~6 ns less than a closure cell
                append(duration)
            else:
                metric.dropped += 1
            return result

        return timed_async

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = pc()
        try:
            # Without keywords, the call skips unpacking an empty dict: ~30 ns of the ~250 ns we add.
            result = fn(*args, **kwargs) if kwargs else fn(*args)
        except BaseException as exc:
            error(pc() - t0, exc)
            raise
        duration = pc() - t0
        if len(buf) < 1 << 20:  # MAX_PENDING, folded to a constant: ~6 ns less than a closure cell
            append(duration)
        else:
            metric.dropped += 1
        return result

    return timed


def _default_name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{qualname}"


def _decorate(fn: Any, name: str | None) -> Any:
    if isinstance(fn, (staticmethod, classmethod)):
        inner = fn.__func__
        return type(fn)(_decorate(inner, name or _default_name(inner)))
    metric = _timing_slow(name if name is not None else _default_name(fn))
    return _wrap(fn, metric)


@overload
def time_it(name: F) -> F: ...
@overload
def time_it(name: str | None = None) -> Callable[[F], F]: ...
def time_it(name: Any = None) -> Any:
    """Time every call of a function: `@time_it("checkout")`, `@time_it()` or bare `@time_it`.

    Works on sync functions and on `async def` functions (the awaited body is timed). Failed calls are
    counted as errors by exception type; the exception propagates unchanged. The default name is
    `module.qualname`. Generator functions are timed until they return their generator: time the loop
    that consumes one with `timer()`.
    """
    if callable(name) or isinstance(name, (staticmethod, classmethod)):
        return _decorate(name, None)

    def decorator(fn: F) -> F:
        return cast(F, _decorate(fn, name))

    return decorator


class timer:
    """`with timer("render"): ...` (or `async with`) times the block under `name`; `@timer("x")` works
    like `@time_it("x")`. A timer object may be reused, but not entered twice at the same time."""

    __slots__ = ("_m", "_t0")

    def __init__(self, name: str) -> None:
        # A class rather than a function returning one: one Python call less per `with` (~40 ns).
        try:
            metric = _timings_get(name)
        except TypeError:
            metric = None
        if metric is None:
            metric = _timing_slow(name)
        self._m = metric

    def __enter__(self) -> timer:
        self._t0 = _pc()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        duration = _pc() - self._t0
        metric = self._m
        if exc is not None:
            metric.error(duration, exc)
        elif len(metric.buf) < MAX_PENDING:
            metric.append(duration)
        else:
            metric.dropped += 1

    async def __aenter__(self) -> timer:
        self._t0 = _pc()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: F) -> F:
        return cast(F, _wrap(fn, self._m))


def count(name: str, n: float = 1) -> None:
    """Add `n` to the counter `name` (reported as its value since start and as a rate)."""
    try:
        metric = _counters.get(name)
    except TypeError:
        metric = None
    if metric is None:
        metric = _counter_slow(name)
    if len(metric.buf) < MAX_PENDING:
        metric.append(n)
    else:
        metric.dropped += 1


def gauge(name: str, value: float) -> None:
    """Set the gauge `name` to `value` (the last value set is reported)."""
    try:
        metric = _gauges.get(name)
    except TypeError:
        metric = None
    if metric is None:
        metric = registry.gauge(str(name))
        if metric is None:
            return
    metric.value = value


def observe(name: str, ms: float) -> None:
    """Record a duration measured elsewhere, in milliseconds, as a sample of the timing `name`."""
    try:
        metric = _timings.get(name)
    except TypeError:
        metric = None
    if metric is None:
        metric = _timing_slow(name)
    if len(metric.buf) >= MAX_PENDING:
        metric.dropped += 1
        return
    try:
        metric.append(ms * 1_000_000.0)
    except Exception:
        metric.invalid += 1


def _after_fork_in_child() -> None:
    """A forked child starts empty, and its agent thread drains the metrics the parent made."""
    try:
        registry.reset_after_fork()
    except Exception as exc:
        log_once("fork-reset", "could not reset the recorder in a forked child", exc=exc)
    if registry.timings or registry.counters:
        pump.ensure_running()


# First of the agent thread's tasks, whatever else fails: the buffers are drained on time.
pump.every(TICK_S, registry.flush, "agent-flush", "the agent thread could not aggregate", first=True)
pump.on_fork(locks=lambda: (registry.lock, registry.drain_lock), in_child=_after_fork_in_child)
