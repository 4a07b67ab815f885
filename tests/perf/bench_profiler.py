"""Benchmark of the sampling profiler (run by hand, not collected by pytest).

    .venv/bin/python tests/perf/bench_profiler.py [--phase-seconds S] [--rounds N]

1. Throughput of a CPU-bound pure-Python thread (40 frames deep) without sampling, with 100 Hz sampling and
   with 1000 Hz sampling, in interleaved phases of the same run; each sampled phase is compared with the
   mean of its two unsampled neighbours, which cancels most drift caused by other load on the machine
   (goal at 100 Hz: <= 3%). The sampler thread's own CPU time while sampling is shown too: it is GIL time
   taken from the app, a load-independent part of the cost (GIL hand-overs add to it).
2. The same for pure-Python work in the main thread, sampled by the in-process sampler (from its SIGPROF
   handler) and by py-spy (`--nonblocking`, from outside; skipped without py-spy or ptrace rights), at
   100 Hz (goal: <= 3% each); and the CPU cost of one SIGPROF handler call, a figure that other load on
   the machine does not blur. Run under `chrt -r 1` (root) for steadier throughput figures.
3. Time from the end of a 5 s, 100 Hz profile of a 50-thread process to the result (goal: <= 0.5 s), and
   the time to serialise that result as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from perftop.agent.actions import run_action

DEPTH = 40


class Worker:
    """A CPU-bound thread counting how many units of pure-Python work it finishes."""

    def __init__(self) -> None:
        self.units = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="bench-cpu", daemon=True)

    def unit(self, depth: int) -> int:
        if depth:
            return self.unit(depth - 1)
        total = 0
        for i in range(2_000):
            total += i * i % 7
        return total

    def run(self) -> None:
        while not self.stop.is_set():
            self.unit(DEPTH)
            self.units += 1


def profile_in_agent_thread(params: dict[str, Any]) -> tuple[dict[str, Any], float, float]:
    """Run the profile action on a "perftop-action" thread as the agent does: result, wall and CPU seconds."""
    box: dict[str, Any] = {}

    def run() -> None:
        started = time.perf_counter()
        cpu = time.thread_time()
        box["result"] = run_action("profile", params, threading.Event())
        box["cpu"] = time.thread_time() - cpu
        box["wall"] = time.perf_counter() - started

    thread = threading.Thread(target=run, name="perftop-action")
    thread.start()
    thread.join()
    return box["result"], box["wall"], box["cpu"]


def throughput(worker: Worker, seconds: float, hz: float | None) -> tuple[float, float, float]:
    """Units/s over `seconds` while sampling at `hz` (None: off); achieved Hz; sampler CPU share of wall."""
    if hz is None:
        before = worker.units
        started = time.perf_counter()
        time.sleep(seconds)
        return (worker.units - before) / (time.perf_counter() - started), 0.0, 0.0
    box: dict[str, float] = {}

    def measure() -> None:
        before = worker.units
        started = time.perf_counter()
        time.sleep(seconds)
        box["rate"] = (worker.units - before) / (time.perf_counter() - started)

    meter = threading.Thread(target=measure)
    meter.start()
    result, _wall, cpu = profile_in_agent_thread({"seconds": seconds + 0.1, "hz": hz})
    meter.join()
    sampling_cpu = cpu - result["build_ms"] / 1000.0
    return box["rate"], float(result["effective_hz"]), sampling_cpu / result["seconds"]


def bench_overhead(phase_seconds: float, rounds: int) -> None:
    """Unsampled phases between sampled ones; each sampled phase is compared with its two neighbours."""
    worker = Worker()
    worker.thread.start()
    time.sleep(1.0)
    plan: list[tuple[str, float | None]] = [("off", None)]
    for _round in range(rounds):
        plan += [("100 Hz", 100.0), ("off", None), ("1000 Hz", 1000.0), ("off", None)]
    measured = [(label, *throughput(worker, phase_seconds, hz)) for label, hz in plan]
    worker.stop.set()
    worker.thread.join()
    off = [rate for label, rate, _hz, _cpu in measured if label == "off"]
    sys.stdout.write(
        f"CPU-bound thread, stack depth {DEPTH}: {len(measured)} interleaved {phase_seconds:.1f} s phases; "
        f"unsampled median {statistics.median(off):,.0f} units/s (range {min(off):,.0f}-{max(off):,.0f})\n"
    )
    for wanted in ("100 Hz", "1000 Hz"):
        slowdowns: list[float] = []
        achieved: list[float] = []
        cpu_share: list[float] = []
        for index, (label, rate, hz, cpu) in enumerate(measured):
            if label != wanted:
                continue
            neighbours = (measured[index - 1][1] + measured[index + 1][1]) / 2.0
            slowdowns.append((neighbours - rate) / neighbours * 100.0)
            achieved.append(hz)
            cpu_share.append(cpu * 100.0)
        quartiles = statistics.quantiles(slowdowns, n=4)
        sys.stdout.write(
            f"  {wanted:>7}: slowdown median {statistics.median(slowdowns):+5.1f}% "
            f"(quartiles {quartiles[0]:+.1f}% .. {quartiles[2]:+.1f}%), achieved "
            f"{statistics.median(achieved):.0f} Hz, sampler CPU {statistics.median(cpu_share):.2f}% of wall\n"
        )


def main_thread_phase(seconds: float, sampler: str | None) -> tuple[float, str]:
    """Units/s of pure-Python work run in this (the main) thread for `seconds`, sampled at 100 Hz by
    `sampler` ("in-process", "py-spy" or None for none); and how the main thread was sampled."""
    worker = Worker()
    box: dict[str, Any] = {}
    spy: subprocess.Popen[bytes] | None = None
    action: threading.Thread | None = None
    if sampler == "in-process":

        def run() -> None:
            box["result"] = run_action("profile", {"seconds": seconds + 0.2, "hz": 100}, threading.Event())

        action = threading.Thread(target=run, name="perftop-action")
        action.start()
        time.sleep(0.1)
    elif sampler == "py-spy":
        from perftop.collectors.pyspy import find_pyspy

        binary = find_pyspy()
        assert binary is not None
        command = [binary, "record", "--pid", str(os.getpid()), "--duration", str(math.ceil(seconds) + 1)]
        command += ["--rate", "100", "--nonblocking", "--format", "raw", "-o", os.devnull]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.4)
    started = time.perf_counter()
    deadline = started + seconds
    units = 0
    while time.perf_counter() < deadline:
        worker.unit(DEPTH)
        units += 1
    rate = units / (time.perf_counter() - started)
    if action is not None:
        action.join()
    if spy is not None:
        spy.wait()
    mode = str(box["result"].get("main_thread_sampling")) if "result" in box else (sampler or "off")
    return rate, mode


def bench_handler_cost() -> None:
    """CPU cost of one SIGPROF handler call at stack depth 40 (what the main thread pays per signal): a
    load-independent figure; at 100 Hz of main-thread CPU the slowdown is 100 x this cost."""
    from perftop.agent.profiler import _SignalSession

    session = _SignalSession(0.01)
    session.state = "active"
    session.last = time.thread_time_ns()
    calls = 20_000

    def measure(depth: int) -> float:
        if depth:
            return measure(depth - 1)
        frame = sys._getframe()
        started = time.thread_time()
        for _ in range(calls):
            session.record(frame)
        return (time.thread_time() - started) / calls

    cost = measure(DEPTH)
    sys.stdout.write(
        f"SIGPROF handler, stack depth {DEPTH}: {cost * 1e6:.1f} us CPU per call -> "
        f"{cost * 100 * 100:.2f}% of the main thread's CPU at 100 Hz\n"
    )


def bench_main_thread(phase_seconds: float, rounds: int) -> None:
    """Interleaved phases of main-thread work: off, in-process, off, py-spy, off...; each sampled phase
    is compared with the mean of its two unsampled neighbours."""
    from perftop.collectors.pyspy import find_pyspy, ptrace_refusal

    samplers: list[str] = ["in-process"]
    if find_pyspy() is not None and ptrace_refusal(os.getpid()) is None:
        samplers.append("py-spy")
    plan: list[str | None] = [None]
    for _round in range(rounds):
        for sampler in samplers:
            plan += [sampler, None]
    measured = [(sampler, *main_thread_phase(phase_seconds, sampler)) for sampler in plan]
    sys.stdout.write(f"Main-thread pure-Python work, stack depth {DEPTH}, {len(plan)} phases:\n")
    for wanted in samplers:
        slowdowns = []
        modes = set()
        for index, (sampler, rate, mode) in enumerate(measured):
            if sampler != wanted:
                continue
            neighbours = (measured[index - 1][1] + measured[index + 1][1]) / 2.0
            slowdowns.append((neighbours - rate) / neighbours * 100.0)
            modes.add(mode)
        quartiles = statistics.quantiles(slowdowns, n=4)
        sys.stdout.write(
            f"  {wanted:>10} at 100 Hz: slowdown median {statistics.median(slowdowns):+5.1f}% (quartiles "
            f"{quartiles[0]:+.1f}% .. {quartiles[2]:+.1f}%), main thread sampled by: {', '.join(modes)}\n"
        )


def _nest(depth: int, leaf: Any) -> Any:
    return _nest(depth - 1, leaf) if depth else leaf()


def bench_result_time() -> None:
    stop = threading.Event()

    def idle() -> None:
        _nest(15, lambda: stop.wait())

    def sleepy() -> None:
        def leaf() -> None:
            while not stop.is_set():
                time.sleep(0.003)
                sum(range(500))

        _nest(25, leaf)

    def busy() -> None:
        def leaf() -> None:
            n = 0
            while not stop.is_set():
                n += sum(i * i for i in range(200))

        _nest(35, leaf)

    kinds = [idle] * 35 + [sleepy] * 13 + [busy] * 2
    threads = [threading.Thread(target=k, name=f"bench-{i}", daemon=True) for i, k in enumerate(kinds)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    result, wall, cpu = profile_in_agent_thread({"seconds": 5, "hz": 100})
    started = time.perf_counter()
    encoded = json.dumps(result)
    dump_ms = (time.perf_counter() - started) * 1000.0
    stop.set()
    for thread in threads:
        thread.join()
    after_ms = (wall - result["seconds"]) * 1000.0
    sys.stdout.write(
        f"5 s profile of {len(threads) + 1} threads at 100 Hz: {result['samples']:,} samples, "
        f"{result['ticks']} ticks (effective {result['effective_hz']:.0f} Hz), "
        f"{len(result['folded'].splitlines())} folded stacks; sampler CPU "
        f"{(cpu - result['build_ms'] / 1000) / result['ticks'] * 1e6:.0f} us per tick\n"
        f"  end of sampling -> result: {after_ms:.0f} ms (summary build {result['build_ms']:.0f} ms); "
        f"json.dumps: {dump_ms:.0f} ms, {len(encoded) / 1024:.0f} KiB\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--phase-seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    sys.stdout.write(f"Python {sys.version.split()[0]}\n")
    bench_overhead(args.phase_seconds, args.rounds)
    bench_handler_cost()
    bench_main_thread(max(args.phase_seconds, 1.5), args.rounds)
    bench_result_time()


if __name__ == "__main__":
    main()
