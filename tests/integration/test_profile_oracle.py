"""The in-process sampler against an oracle: py-spy, profiling the same process over the same seconds.

Each target (tests/targets/prof_oracle.py) has a stationary split between pure-Python work and waits. The test
runs `py-spy record` on it and, at the same time, `perftop action profile --sampler in-process`, then compares
every function's share of the samples (innermost frame, i.e. self time), with idle samples counted and
without: they must agree within 5 percentage points. py-spy sees perftop's own threads and the frames of its
SIGPROF handler in the main thread; perftop never reports its own code, so those are left out of py-spy's
counts before the shares are taken. Also checked here: `--sampler py-spy` gives the same shape as the
in-process profile and says which sampler ran.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from perftop.collectors.pyspy import find_pyspy, ptrace_refusal
from tests.helpers import perftop_json

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "tests" / "targets" / "prof_oracle.py"
AGENT_DIR = str(ROOT / "perftop") + os.sep
SECONDS = 3
HZ = 200
TOLERANCE_PP = 5.0
MAX_RUNNABLE_SHARE = 0.10
"""Above this share of wall time spent runnable but waiting for a CPU (an overloaded machine), where a thread
is then is a matter of scheduling, not of the sampler: the comparison is skipped with the figure."""


def _pyspy() -> str:
    binary = find_pyspy()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("py-spy is a test dependency and must be installed in CI")
        pytest.skip("py-spy is not installed (pip install -e '.[test]')")
    return binary


def _realtime(priority: int) -> Callable[[], None]:
    """Before exec: round-robin real-time priority where allowed (root), so that other load on the machine
    does not keep the target waiting for a CPU (the RT throttle still leaves others 5% of each CPU). py-spy
    gets a higher one: else it runs only while the target waits, and sees it waiting."""

    def apply() -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))

    return apply


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """Start prof_oracle.py with the given arguments; returns the PID to profile. Kills its group after."""
    started: list[subprocess.Popen[str]] = []
    env = dict(os.environ, PYTHONPATH=str(ROOT), PERFTOP_SOCKET_DIR=str(tmp_path / "sockets"))

    def start(*args: str) -> int:
        proc = subprocess.Popen(
            [sys.executable, str(TARGET), *args],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
            preexec_fn=_realtime(1),
        )
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line and line[0] == "ready", f"target did not start: {line}"
        pid = int(line[1])
        refusal = ptrace_refusal(pid)
        if refusal is not None:
            pytest.skip(f"py-spy cannot attach here: {refusal}")
        return pid

    yield start
    for proc in started:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def perftop_profile(pid: int, socket_dir: str, *options: str) -> dict[str, Any]:
    options = (*options, "--seconds", str(SECONDS), "--hz", str(HZ))
    env = dict(os.environ, PERFTOP_SOCKET_DIR=socket_dir)
    result: dict[str, Any] = perftop_json(
        "action", "--pid", str(pid), "profile", "--json", *options, env=env, cwd=ROOT
    )
    return result


def start_pyspy(pid: int, out: Path, idle: bool) -> subprocess.Popen[bytes]:
    command = [_pyspy(), "record", "--pid", str(pid), "--duration", str(SECONDS), "--rate", str(HZ)]
    command += ["--format", "raw", "--threads", "--nonblocking", "--full-filenames", "-o", str(out)]
    return subprocess.Popen(
        command + (["--idle"] if idle else []),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_realtime(2),
    )


WAITS = frozenset({"wait_select", "wait_sleep", "wait_socket"})
"""The targets' functions that only make a blocking call. Busy-only, both samplers put a few percent of a
1-5 ms burst loop's samples at the edges of the blocking call, each its own way: py-spy (4-23%) reads the
thread's OS state apart from its stack and often finds it runnable at the call's entry or exit; perftop's
CPU-clock timer (3-5%) delivers the tick the kernel counted during the call just after it returns, in
the call's function or the context manager around it. The busy-only comparison leaves the samples of
those functions out on both sides and compares the shares of the Python work itself."""


def pyspy_shares(out: Path, threads: str, idle: bool = True) -> tuple[dict[tuple[str, str], float], int]:
    """Self share (%) of each (function, file name) in py-spy's raw output, perftop's own code left out
    (and, busy-only, the samples inside a blocking call: see WAITS)."""
    counts: dict[tuple[str, str], int] = {}
    for line in out.read_text().splitlines():
        stack, _space, count = line.rpartition(" ")
        parts = stack.split(";")
        name = parts[0].partition(": ")[2]
        if name.startswith("perftop") or (threads == "main" and name != "MainThread") or len(parts) < 2:
            continue
        func, _paren, where = parts[-1].rpartition(" (")
        path = where.rsplit(":", 1)[0]
        if path.startswith(AGENT_DIR):
            continue
        if not idle and (func in WAITS or os.path.basename(path) == "contextlib.py"):
            continue
        key = (func, os.path.basename(path))
        counts[key] = counts.get(key, 0) + int(count)
    total = sum(counts.values())
    return {key: 100.0 * n / total for key, n in counts.items()}, total


def perftop_shares(result: dict[str, Any], idle: bool) -> tuple[dict[tuple[str, str], float], int]:
    """Self share (%) of each (function, file name) in perftop's result; busy-only, like `pyspy_shares`,
    without the samples at a blocking call or the context manager around it (see WAITS)."""
    total = result["samples"] - (0 if idle else result["idle_samples"])
    rows = [
        row
        for row in result["top"]
        if idle or not (row["function"] in WAITS or os.path.basename(row["file"]) == "contextlib.py")
    ]
    if not idle:
        total = sum(row["self_samples"] for row in rows) or 1
    shares: dict[tuple[str, str], float] = {}
    for row in rows:
        key = (row["function"], os.path.basename(row["file"]))
        shares[key] = shares.get(key, 0.0) + 100.0 * row["self_samples"] / total
    return shares, total


def runnable_ns(pid: int) -> dict[int, int]:
    """Per thread of `pid`: ns spent runnable, waiting for a CPU (/proc schedstat)."""
    waits: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            waits[int(task.name)] = int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return waits


def compare(pid: int, socket_dir: str, idle: bool, threads: str = "all") -> dict[str, Any]:
    """Profile `pid` with py-spy and perftop at once; assert every function's share agrees within 5 pp.

    A share measured over 3 s by two samplers of a periodic target moves from one window to the next
    (phase, scheduling; up to 16 points in a window was seen on a loaded machine): a window beyond the
    tolerance is measured again, and only three misses in a row fail (the old sampler's 0.5% against
    py-spy's 48% missed in every window)."""
    for _ in range(2):
        try:
            return _compare(pid, socket_dir, idle, threads)
        except AssertionError:
            continue
    return _compare(pid, socket_dir, idle, threads)


def _compare(pid: int, socket_dir: str, idle: bool, threads: str) -> dict[str, Any]:
    before = runnable_ns(pid)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pyspy.txt"
        spy = start_pyspy(pid, out, idle)
        options = ["--sampler", "in-process", "--threads", threads] + (["--include-idle"] if idle else [])
        result = perftop_profile(pid, socket_dir, *options)
        _stdout, stderr = spy.communicate(timeout=120)
        assert spy.returncode == 0, stderr.decode(errors="replace")
        expected, spy_total = pyspy_shares(out, threads, idle)
    after = runnable_ns(pid)
    wall_ns = (time.monotonic() - started) * 1e9
    waited = max(after[tid] - before.get(tid, 0) for tid in after) / wall_ns
    if waited > MAX_RUNNABLE_SHARE:
        pytest.skip(
            f"machine overloaded: a thread of the target waited for a CPU {100 * waited:.0f}% of the time"
        )
    got, total = perftop_shares(result, idle)
    assert result["sampler"] == "in-process"
    assert spy_total >= SECONDS * HZ // 3 and total >= SECONDS * HZ // 3, (spy_total, total)
    report = {
        f"{k[0]} ({k[1]})": (round(got.get(k, 0.0), 1), round(expected.get(k, 0.0), 1))
        for k in sorted(set(got) | set(expected))
    }
    worst = max(abs(got.get(k, 0.0) - expected.get(k, 0.0)) for k in set(got) | set(expected))
    assert worst <= TOLERANCE_PP, (
        f"perftop vs py-spy shares (%), idle={idle}: {report}; main: {result.get('main_thread_signal')}"
    )
    return result


BURSTS = [
    (ms, kind, idle)
    for ms, kind in [("1", "select"), ("5", "select"), ("50", "select"), ("5", "sleep"), ("5", "socket")]
    for idle in (True, False)
]


@pytest.mark.parametrize(("ms", "kind", "idle"), BURSTS)
def test_bursts_in_the_main_thread_agree_with_pyspy(
    target: Callable[..., int], tmp_path: Path, ms: str, kind: str, idle: bool
) -> None:
    pid = target("burst", ms, kind)
    result = compare(pid, str(tmp_path / "sockets"), idle, threads="main")
    assert result["main_thread_sampling"] == "signal", result.get("main_thread_note")


@pytest.mark.parametrize("idle", [True, False], ids=["idle", "busy-only"])
def test_cpu_bound_thread_beside_a_waiting_one_agrees_with_pyspy(
    target: Callable[..., int], tmp_path: Path, idle: bool
) -> None:
    pid = target("threads")
    compare(pid, str(tmp_path / "sockets"), idle)


@pytest.mark.parametrize("idle", [True, False], ids=["idle", "busy-only"])
def test_forked_child_agrees_with_pyspy(target: Callable[..., int], tmp_path: Path, idle: bool) -> None:
    pid = target("fork", "5")
    result = compare(pid, str(tmp_path / "sockets"), idle, threads="main")
    assert result["main_thread_sampling"] == "signal", result.get("main_thread_note")
    main = [t for t in result["threads"] if t["main"]]
    assert main and main[0]["native_id"] == pid


def test_pyspy_sampler_gives_the_profile_shape(target: Callable[..., int], tmp_path: Path) -> None:
    _pyspy()
    pid = target("burst", "20", "select")
    spy = perftop_profile(pid, str(tmp_path / "sockets"), "--sampler", "py-spy", "--include-idle")
    own = perftop_profile(pid, str(tmp_path / "sockets"), "--sampler", "in-process", "--include-idle")
    assert spy["sampler"] == "py-spy" and own["sampler"] == "in-process"
    for key in ("samples", "idle_samples", "threads", "top", "top_total", "lines", "folded", "tree"):
        assert type(spy[key]) is type(own[key]), key
    assert sum(int(line.rsplit(" ", 1)[1]) for line in spy["folded"].splitlines()) == spy["samples"]
    spin = next(row for row in spy["top"] if row["function"] == "spin")
    assert spin["file"] == str(TARGET)
    waits = next(row for row in spy["top"] if row["function"] == "wait_select")
    assert 0 < waits["self_samples"] <= spy["idle_samples"] < spy["samples"]
