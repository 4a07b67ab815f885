"""The recorder in this very process: decorators, timers, counters, errors, threads, the cardinality cap."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import uuid
from typing import Any

import pytest

import perftop
from perftop.agent import gcwatch
from perftop.agent.recorder import OVERFLOW_NAME, Registry, registry
from perftop.wire.sketch import Sketch
from tests.targets.agent_harness import ROOT, target_env


def run_script(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `script` in a fresh interpreter that imports this checkout's perftop."""
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env or target_env(),
        cwd=str(ROOT),
        timeout=60,
    )


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


def total(name: str) -> Sketch:
    """Everything recorded under timing `name` so far (drains the pending buffers first)."""
    registry.flush()
    return registry.timings[name].windows.total


def test_sync_function_with_default_name() -> None:
    @perftop.time_it
    def add(a: int, b: int = 1) -> int:
        return a + b

    assert add(1) == 2 and add(1, b=5) == 6 and add(a=2, b=2) == 4
    assert add.__name__ == "add"
    name = f"{__name__}.test_sync_function_with_default_name.<locals>.add"
    assert total(name).count == 3
    assert total(name).errors == 0


def test_named_decorator_and_call_forms() -> None:
    name = unique("checkout")

    @perftop.time_it(name)
    def checkout() -> str:
        return "ok"

    @perftop.time_it()
    def other() -> None:
        pass

    for _ in range(10):
        assert checkout() == "ok"
    other()
    assert total(name).count == 10
    assert total(f"{__name__}.test_named_decorator_and_call_forms.<locals>.other").count == 1


def test_async_function_times_the_awaited_body() -> None:
    name = unique("async")

    @perftop.time_it(name)
    async def slow(x: int) -> int:
        await asyncio.sleep(0.02)
        return x * 2

    assert asyncio.iscoroutinefunction(slow)
    assert asyncio.run(slow(21)) == 42
    sk = total(name)
    assert sk.count == 1
    assert sk.min >= 20_000_000  # nanoseconds: the sleep is inside the timing


def test_async_exception_and_cancellation_are_counted() -> None:
    name = unique("async.fail")

    @perftop.time_it(name)
    async def fail() -> None:
        await asyncio.sleep(0)
        raise TimeoutError("late")

    @perftop.time_it(name)
    async def forever() -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        with pytest.raises(TimeoutError, match="late"):
            await fail()
        task = asyncio.create_task(forever())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert total(name).errors == 2
    assert registry.timings[name].errors_by_type == {"TimeoutError": 1, "CancelledError": 1}


def test_timer_context_manager_sync_async_and_decorator() -> None:
    name = unique("block")
    for _ in range(5):
        with perftop.timer(name) as t:
            assert isinstance(t, perftop.timer)

    async def main() -> None:
        async with perftop.timer(name):
            await asyncio.sleep(0)

    asyncio.run(main())

    @perftop.timer(name)
    def decorated() -> int:
        return 7

    assert decorated() == 7
    reused = perftop.timer(name)
    with reused:
        pass
    with reused:
        pass
    assert total(name).count == 9


class Boom(Exception):
    pass


def test_exception_propagates_unchanged_and_is_counted_by_type() -> None:
    name = unique("fails")
    raised: list[BaseException] = []

    @perftop.time_it(name)
    def fails(kind: type[BaseException]) -> None:
        exc = kind("on purpose")
        raised.append(exc)
        raise exc

    for kind in (Boom, Boom, KeyError):
        with pytest.raises(kind) as info:
            fails(kind)
        assert info.value is raised[-1]
        # The innermost frame is still the line that raised, inside the function.
        last = traceback.extract_tb(info.value.__traceback__)[-1]
        assert last.name == "fails" and last.line == "raise exc"
        assert info.value.__cause__ is None and info.value.__context__ is None
    with pytest.raises(ValueError) as info2, perftop.timer(name):
        raise ValueError("in a block")
    assert str(info2.value) == "in a block"
    sk = total(name)
    assert sk.count == 4 and sk.errors == 4
    assert registry.timings[name].errors_by_type == {"Boom": 2, "KeyError": 1, "ValueError": 1}


def test_methods_staticmethods_and_classmethods() -> None:
    class Shop:
        @perftop.time_it
        def buy(self) -> str:
            return "bought"

        @perftop.time_it
        @staticmethod
        def open_() -> str:
            return "open"

        @perftop.time_it
        @classmethod
        def make(cls) -> Shop:
            return cls()

    shop = Shop.make()
    assert shop.buy() == "bought" and Shop.open_() == "open" and shop.open_() == "open"
    prefix = f"{__name__}.test_methods_staticmethods_and_classmethods.<locals>.Shop"
    assert total(f"{prefix}.buy").count == 1
    assert total(f"{prefix}.open_").count == 2
    assert total(f"{prefix}.make").count == 1


def test_count_is_exact_under_four_threads() -> None:
    name = unique("threads")
    counter_name = unique("threads.count")
    per_thread = 50_000

    @perftop.time_it(name)
    def work() -> None:
        pass

    def run() -> None:
        for _ in range(per_thread):
            work()
            perftop.count(counter_name)
            with perftop.timer(name):
                pass

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The agent thread drained concurrently while the threads appended: nothing may be lost.
    assert total(name).count == 4 * per_thread * 2
    assert registry.counters[counter_name].sums.total == 4 * per_thread
    assert registry.counters[counter_name].calls == 4 * per_thread


def test_counters_gauges_and_observations() -> None:
    c, g, o = unique("c"), unique("g"), unique("o")
    perftop.count(c)
    perftop.count(c, 4)
    perftop.count(c, 2.5)
    perftop.gauge(g, 3)
    perftop.gauge(g, 17)
    for ms in (1.0, 2.0, 250.0):
        perftop.observe(o, ms)
    registry.flush()
    assert registry.counters[c].sums.total == 7.5
    assert registry.gauges_stats()[g] == 17.0
    sk = total(o)
    assert sk.count == 3
    assert sk.max == 250_000_000.0 and sk.min == 1_000_000.0


def test_bad_values_never_raise_and_are_counted() -> None:
    o, c, g = unique("bad.o"), unique("bad.c"), unique("bad.g")
    before = registry.overflow()["invalid_values"]
    perftop.observe(o, 5.0)
    perftop.observe(o, "slow")  # type: ignore[arg-type]
    perftop.observe(o, float("nan"))
    perftop.observe(o, float("inf"))
    perftop.observe(o, [1])  # type: ignore[arg-type]
    perftop.observe(o, -3.0)
    perftop.count(c, 1)
    perftop.count(c, "x")  # type: ignore[arg-type]
    perftop.count(c, float("nan"))
    perftop.gauge(g, "high")  # type: ignore[arg-type]
    perftop.count(["unhashable"], 1)  # type: ignore[arg-type]
    perftop.gauge(None, 1)  # type: ignore[arg-type]
    registry.flush()
    sk = total(o)
    assert sk.count == 2 and sk.zero == 1  # 5 ms, and a negative duration read as 0
    assert registry.counters[c].sums.total == 1
    assert g not in registry.gauges_stats()
    assert registry.overflow()["invalid_values"] - before == 6
    # Whatever was recorded still serialises.
    json.dumps(registry.timings_stats(None, 0.0), allow_nan=False)


def test_cardinality_cap_in_a_registry() -> None:
    reg = Registry(max_metrics=3)
    kept = [reg.timing(f"t{i}") for i in range(3)]
    assert len({id(m) for m in kept}) == 3
    over1 = reg.timing("t3")
    over2 = reg.counter("c0")
    assert over1.name == OVERFLOW_NAME and over2.name == OVERFLOW_NAME
    assert reg.timing("t3") is over1
    assert reg.timing("t0") is kept[0]
    assert reg.gauge("g0") is None
    assert reg.timing("gc.gen0", internal=True).name == "gc.gen0"
    over1.append(5)
    over1.append(6)
    over2.append(1)
    reg.flush()
    overflow = reg.overflow()
    assert overflow["metrics"] == 3
    assert overflow["metrics_dropped"] == 3  # t3, c0, g0
    assert overflow["calls_dropped"] == 4  # two timings, one count, one gauge set
    assert len(reg.timings) == 5  # t0..t2, the overflow metric, gc.gen0


def test_cardinality_cap_through_the_public_api_in_a_fresh_process() -> None:
    script = textwrap.dedent(
        """
        import json, sys
        import perftop
        from perftop.agent.recorder import registry
        for i in range(50):
            perftop.count(f"c{i}")
            with perftop.timer(f"t{i}"):
                pass
        registry.flush()
        sys.stdout.write(json.dumps({
            "overflow": registry.overflow(),
            "counters": sorted(registry.counters),
            "timings": sorted(registry.timings),
            "over_t": registry.timings["perftop.overflow"].windows.total.count,
            "over_c": registry.counters["perftop.overflow"].sums.total,
        }))
        """
    )
    env = {**target_env(), "PERFTOP_MAX_METRICS": "10"}
    proc = run_script(script, env)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    # c0, t0, c1, t1, ... the first ten names are kept, the rest fold into perftop.overflow.
    assert out["counters"] == sorted(["c0", "c1", "c2", "c3", "c4", OVERFLOW_NAME])
    assert out["timings"] == sorted(["t0", "t1", "t2", "t3", "t4", OVERFLOW_NAME])
    assert out["over_t"] == 45 and out["over_c"] == 45
    assert out["overflow"]["metrics_dropped"] == 90
    assert out["overflow"]["max_metrics"] == 10


def test_gc_pauses_are_recorded() -> None:
    gcwatch.install()
    try:
        before = gcwatch.gc_stats()["collections"][2]
        registry.flush()
        count_before = registry.timings["gc.gen2"].windows.total.count
        gc.collect()
        gc.collect()
        assert gcwatch.gc_stats()["collections"][2] == before + 2
        assert total("gc.gen2").count == count_before + 2
    finally:
        gcwatch.uninstall()
    gc.collect()
    assert gcwatch.gc_stats()["collections"][2] == before + 2


def test_import_perftop_needs_only_the_standard_library() -> None:
    script = textwrap.dedent(
        """
        import sys
        import perftop
        @perftop.time_it
        def f(): pass
        f()
        heavy = [m for m in ("textual", "psutil", "sqlalchemy", "rich") if m in sys.modules]
        sys.stdout.write(",".join(heavy))
        """
    )
    proc = run_script(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


def test_start_never_raises_and_logs_once(tmp_path: Any) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        import perftop
        blocker = {str(tmp_path / "file")!r}
        open(blocker, "w").close()
        perftop.start(socket_dir=blocker + "/sub")   # a path under a plain file: cannot be created
        perftop.start(socket_dir=blocker + "/sub")
        @perftop.time_it
        def f(): return 1
        sys.stdout.write(str(f() + f()))
        """
    )
    proc = run_script(script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "2"
    assert proc.stderr.count("could not start the agent") == 1


def test_fork_gives_the_child_an_empty_recorder() -> None:
    name = unique("fork")
    perftop.count(name, 5)
    registry.flush()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it sees, then leave without running the parent's cleanup
        try:
            registry.flush()
            perftop.count(name, 2)
            registry.flush()
            os.write(write, json.dumps(registry.counters[name].sums.total).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        seen = f.read()
    os.waitpid(pid, 0)
    assert json.loads(seen) == 2
    assert registry.counters[name].sums.total == 5


def test_asyncio_loop_lag_is_recorded() -> None:
    name = unique("loop.lag")

    async def main() -> None:
        perftop.watch_loop(interval=0.01, name=name)
        perftop.watch_loop(interval=0.01, name=name)  # idempotent per loop
        for _ in range(20):
            await asyncio.sleep(0.01)
        time.sleep(0.2)  # the loop blocked for 200 ms: the next tick is that late, less one interval
        await asyncio.sleep(0.05)

    asyncio.run(main())
    sk = total(name)
    assert sk.count >= 5
    assert sk.max >= 190_000_000  # ns: 200 ms blocked, minus at most the 10 ms tick interval
