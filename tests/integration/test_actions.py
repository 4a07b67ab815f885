"""perftop's in-process actions (profile, profile_exact, memory, gc, threads), run in real target processes.

Each target (tests/targets/act_*.py) runs `run_action` on a thread named like the agent's worker when told to
on stdin and writes the JSON result on stdout; the agent server is not involved.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ROOT / "tests" / "targets"
CLI_PROFILE_KEYS = {"seconds", "hz", "samples", "threads", "top", "lines", "folded"}
FOLDED_LINE = re.compile(r"^(?P<stack>[^\n]+) (?P<count>\d+)$")


def marker_line(path: Path, marker: str) -> int:
    """The 1-based line of `path` carrying `marker` (targets mark their interesting lines)."""
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        if marker in text:
            return number
    raise AssertionError(f"{marker} not found in {path}")


class Target:
    """A target process speaking the act_harness line protocol."""

    def __init__(self, script: str, stderr_path: Path) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT)
        env["PYTHONUNBUFFERED"] = "1"
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(TARGETS / script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=ROOT,
            env=env,
        )
        self._replies: dict[int, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._next_id = 0
        self._ready = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready or self.proc.poll() is not None, timeout=30):
                raise AssertionError("target did not start")
        assert self._ready, f"target exited at start: {self.stderr()}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            message = json.loads(raw)
            with self._cond:
                if message.get("ready"):
                    self._ready = True
                else:
                    self._replies[message["id"]] = message
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def send(self, message: dict[str, Any]) -> int:
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"id": ident, **message}) + "\n").encode())
        self.proc.stdin.flush()
        return ident

    def reply(self, ident: int, timeout: float = 60.0) -> dict[str, Any]:
        with self._cond:
            done = self._cond.wait_for(
                lambda: ident in self._replies or self.proc.poll() is not None, timeout=timeout
            )
            if ident in self._replies:
                return self._replies.pop(ident)
        raise AssertionError(f"no reply to #{ident} (timed out: {not done}); stderr: {self.stderr()}")

    def start_action(self, name: str, **params: Any) -> int:
        return self.send({"action": name, "params": params})

    def result(self, ident: int, timeout: float = 60.0) -> Any:
        reply = self.reply(ident, timeout)
        assert reply["ok"], reply
        return reply["result"]

    def action(self, name: str, **params: Any) -> Any:
        return self.result(self.start_action(name, **params))

    def action_error(self, name: str, **params: Any) -> str:
        reply = self.reply(self.start_action(name, **params))
        assert not reply["ok"], reply
        assert reply["error_type"] == "ActionError", reply
        error = reply["error"]
        assert isinstance(error, str) and "\n" not in error and error
        return error

    def cmd(self, command: str, **args: Any) -> Any:
        return self.result(self.send({"cmd": command, "args": args}))

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[str], Target]]:
    started: list[Target] = []

    def start(script: str) -> Target:
        target = Target(script, tmp_path / f"{script}.{len(started)}.stderr")
        started.append(target)
        return target

    yield start
    for target in started:
        target.close()


def parse_folded(folded: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in folded.splitlines():
        match = FOLDED_LINE.match(line)
        assert match, f"bad folded line: {line!r}"
        frames = match["stack"].split(";")
        assert all(frames), line
        stacks.append((frames, int(match["count"])))
    return stacks


def check_tree(node: dict[str, Any], depth: int = 0) -> None:
    assert set(node) >= {"name", "file", "line", "total", "self", "children"}
    assert depth <= 64
    assert sum(child["total"] for child in node["children"]) + node["self"] <= node["total"]
    for child in node["children"]:
        check_tree(child, depth + 1)


# ---------------------------------------------------------------------------------------------------------
# profile (sampling)


def test_profile_finds_the_hot_function_and_line(spawn: Callable[[str], Target]) -> None:
    target = spawn("act_profile.py")
    script = str(TARGETS / "act_profile.py")
    hot_line = marker_line(TARGETS / "act_profile.py", "# HOT-LINE")
    result = target.action("profile", seconds=2, hz=100)

    assert set(result) >= CLI_PROFILE_KEYS
    assert result["hz"] == 100 and 1.9 <= result["seconds"] < 10 and not result["cancelled"]
    assert result["samples"] > 0
    top = result["top"][0]
    assert (top["function"], top["file"]) == ("hot", script)
    assert top["self_samples"] > 0 and top["total_samples"] >= top["self_samples"]
    assert {"file": script, "line": hot_line} in [
        {"file": r["file"], "line": r["line"]} for r in result["lines"][:3]
    ]
    assert len(result["top"]) <= 50 and len(result["lines"]) <= 50

    threads = {t["name"]: t for t in result["threads"]}
    assert {"app-hot", "app-warm", "app-idle", "app-sleepy", "MainThread"} <= set(threads)
    assert not [name for name in threads if name.startswith("perftop")]
    assert sum(t["samples"] for t in result["threads"]) == result["samples"]
    # app-idle waits in Event.wait, app-sleepy in time.sleep; the main thread blocks reading stdin through a
    # C iterator (found idle by its CPU clock); app-hot computes.
    assert threads["app-idle"]["idle_samples"] >= 0.9 * threads["app-idle"]["samples"] > 0
    assert threads["app-sleepy"]["idle_samples"] >= 0.9 * threads["app-sleepy"]["samples"] > 0
    assert threads["MainThread"]["idle_samples"] >= 0.9 * threads["MainThread"]["samples"] > 0
    assert threads["app-hot"]["idle_samples"] < threads["app-hot"]["samples"] / 2
    assert result["idle_samples"] == sum(t["idle_samples"] for t in result["threads"])
    assert sum(row["self_samples"] for row in result["top"]) <= result["samples"] - result["idle_samples"]

    stacks = parse_folded(result["folded"])
    assert sum(count for _frames, count in stacks) == result["samples"]
    assert {frames[0] for frames, _count in stacks} <= set(threads)
    assert not [frames for frames, _count in stacks if any(f.startswith("perftop") for f in frames[:1])]
    assert any(frames[0] == "app-hot" and frames[-1].startswith("hot (") for frames, _count in stacks)
    assert not any("perftop/agent" in frame for frames, _count in stacks for frame in frames)

    tree = result["tree"]
    check_tree(tree)
    assert tree["total"] == result["samples"]
    assert "app-hot" in [child["name"] for child in tree["children"]]

    doc = result["speedscope"]
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    frames = doc["shared"]["frames"]
    assert frames and all(isinstance(f["name"], str) for f in frames)
    assert {p["name"] for p in doc["profiles"]} == set(threads)
    for profile in doc["profiles"]:
        assert profile["type"] == "sampled" and profile["unit"] == "none" and profile["startValue"] == 0
        assert len(profile["samples"]) == len(profile["weights"])
        assert profile["endValue"] == sum(profile["weights"]) == threads[profile["name"]]["samples"]
        assert all(0 <= i < len(frames) for stack in profile["samples"] for i in stack)
    assert 0 <= doc["activeProfileIndex"] < len(doc["profiles"])


def test_profile_selected_threads_and_idle_inclusion(spawn: Callable[[str], Target]) -> None:
    target = spawn("act_profile.py")
    only_hot = target.action("profile", seconds=0.5, hz=200, threads=["app-hot"])
    assert [t["name"] for t in only_hot["threads"]] == ["app-hot"]
    with_idle = target.action("profile", seconds=0.5, hz=100, threads="app-idle", include_idle=True)
    assert [t["name"] for t in with_idle["threads"]] == ["app-idle"]
    assert with_idle["top"][0]["file"].endswith("threading.py")
    assert sum(row["self_samples"] for row in with_idle["top"]) == with_idle["samples"]
    without_idle = target.action("profile", seconds=0.5, hz=100, threads="app-idle")
    assert without_idle["idle_samples"] >= 0.9 * without_idle["samples"] > 0
    active = without_idle["samples"] - without_idle["idle_samples"]
    assert sum(row["self_samples"] for row in without_idle["top"]) == active


def test_profile_survives_thread_churn(spawn: Callable[[str], Target]) -> None:
    target = spawn("act_profile.py")
    target.cmd("churn")
    result = target.action("profile", seconds=1, hz=500)
    stacks = parse_folded(result["folded"])
    assert sum(count for _frames, count in stacks) == result["samples"] > 0
    assert "app-churn" in {t["name"] for t in result["threads"]}
    assert target.stderr() == ""


def test_profile_bad_parameters_are_one_line_errors(spawn: Callable[[str], Target]) -> None:
    target = spawn("act_profile.py")
    assert "seconds must be between" in target.action_error("profile", seconds=0)
    assert "seconds must be between" in target.action_error("profile", seconds=301)
    assert "hz must be between" in target.action_error("profile", hz=5000)
    assert "hz must be a number" in target.action_error("profile", hz="fast")
    assert "threads" in target.action_error("profile", threads=[None])
    assert "include_idle" in target.action_error("profile", include_idle="maybe")
    assert "unknown action" in target.action_error("explode")
    assert "generation must be between 0 and 2" in target.action_error("gc", generation=3)
    assert "frames must be between" in target.action_error("memory", frames=0)
    assert "sort must be one of" in target.action_error("profile_exact", sort="name")


def test_profile_samples_the_main_thread_from_sigprof_only_while_profiling(
    spawn: Callable[[str], Target],
) -> None:
    """The main thread alternates 5 ms of Python and 5 ms in select() while a profile runs: its handler runs
    (signals, CPU charged to the Python function), and SIGPROF and its timer are the app's again after. How
    well the split agrees with py-spy is test_profile_oracle.py's business."""
    target = spawn("act_profile.py")
    before = target.cmd("sigprof")
    for use_signal in (True, False):
        ident = target.start_action(
            "profile", seconds=1.5, hz=200, threads="main", include_idle=True, signal=use_signal
        )
        assert target.cmd("bursts", seconds=2.5, ms=5) > 0
        result = target.result(ident)
        assert result["sampler"] == "in-process"
        assert result["main_thread_sampling"] == ("signal" if use_signal else "thread"), result
        if use_signal:
            info = result["main_thread_signal"]
            assert info["signals"] > 0 and 0 < info["cpu_seconds"] <= info["seconds"], info
            assert any(r["function"] == "burst_spin" and r["self_samples"] > 0 for r in result["top"])
        else:
            assert result["main_thread_signal"] is None
            assert "switched off" in result["main_thread_note"]
    assert target.cmd("sigprof") == before == {"handler": "<Handlers.SIG_DFL: 0>", "timer": [0.0, 0.0]}
    assert "perftop" not in target.stderr()


def test_profile_leaves_an_apps_own_sigprof_handler_alone(spawn: Callable[[str], Target]) -> None:
    target = spawn("act_profile.py")
    own = target.cmd("sigprof", own=True)["handler"]
    assert "app_sigprof" in own
    ident = target.start_action("profile", seconds=1, hz=100, threads="main", include_idle=True)
    target.cmd("bursts", seconds=1.5, ms=5)
    result = target.result(ident)
    assert result["main_thread_sampling"] == "thread"
    assert "own SIGPROF handler" in result["main_thread_note"]
    assert any("under-counted" in note for note in result["notes"])
    assert target.cmd("sigprof")["handler"] == own


def test_profile_cancel_returns_what_was_gathered(spawn: Callable[[str], Target]) -> None:
    target = spawn("act_profile.py")
    ident = target.start_action("profile", seconds=120, hz=100)
    target.result(target.send({"cancel": ident}))
    result = target.result(ident, timeout=10)
    assert result["cancelled"] is True
    assert result["seconds"] < 120
    assert result["samples"] > 0
    assert sum(count for _frames, count in parse_folded(result["folded"])) == result["samples"]


def test_target_exiting_mid_profile_prints_nothing(spawn: Callable[[str], Target]) -> None:
    target = spawn("act_profile.py")
    target.start_action("profile", seconds=120, hz=1000)
    target.start_action("threads")
    target.send({"cmd": "exit"})
    assert target.proc.wait(timeout=30) == 0
    assert target.stderr() == ""


# ---------------------------------------------------------------------------------------------------------
# profile_exact (cProfile)


def _assert_no_profiler_left(target: Target) -> None:
    report = target.cmd("getprofile")
    assert report["threading_hook"] == "None"
    assert report["threads"], report
    assert all(value is None for value in report["threads"].values()), report
    assert target.cmd("profiler_active") is False


def test_profile_exact_covers_new_threads_and_switches_off(spawn: Callable[[str], Target]) -> None:
    target = spawn("act_profile.py")
    ident = target.start_action("profile_exact", seconds=1.5)
    wait_for(lambda: target.cmd("profiler_active"), 10, "the profiler to be installed")
    target.cmd("spawn_hot", name="app-late")
    result = target.result(ident)

    assert set(result) >= {"seconds", "top", "overhead_note", "threads_covered"}
    assert result["overhead_note"] and not result["cancelled"]
    assert "app-late" in result["threads_covered"]
    if sys.version_info < (3, 12):
        assert result["mode"] == "per-thread"
        assert "MainThread" in result["threads_not_covered"] and "app-hot" in result["threads_not_covered"]
    else:
        assert result["mode"] == "sys.monitoring" and "app-hot" in result["threads_covered"]
    rows = {row["function"]: row for row in result["top"]}
    assert "hot" in rows and rows["hot"]["calls"] > 0 and rows["hot"]["total_ms"] > 0
    assert rows["hot"]["file"] == str(TARGETS / "act_profile.py")
    if result["mode"] == "per-thread":
        assert result["cumulative_reliable"] is True
        assert rows["hot"]["cumulative_ms"] >= rows["hot"]["total_ms"]
    else:
        # One cProfile sees every thread on 3.12+: cumulative times mix stacks, and the result says so.
        assert result["cumulative_reliable"] is False
    assert not [row for row in result["top"] if "perftop/agent" in row["file"]]
    _assert_no_profiler_left(target)


def test_profile_exact_cancel_and_busy(spawn: Callable[[str], Target]) -> None:
    target = spawn("act_profile.py")
    ident = target.start_action("profile_exact", seconds=120)
    wait_for(lambda: target.cmd("profiler_active"), 10, "the profiler to be installed")
    target.cmd("spawn_hot", name="app-late")
    assert "already running" in target.action_error("profile_exact", seconds=1)
    target.result(target.send({"cancel": ident}))
    result = target.result(ident, timeout=10)
    assert result["cancelled"] is True and result["seconds"] < 120
    _assert_no_profiler_left(target)
    again = target.action("profile_exact", seconds=0.2)
    assert again["cancelled"] is False
    _assert_no_profiler_left(target)


@pytest.mark.skipif(
    sys.version_info >= (3, 12), reason="3.12+ profiles through sys.monitoring, not this hook"
)
def test_profile_exact_leaves_the_apps_own_threading_hook_alone(spawn: Callable[[str], Target]) -> None:
    target = spawn("act_profile.py")
    hook = target.cmd("app_hook", on=True)
    assert "app_profile_hook" in hook
    assert "own threading.setprofile hook" in target.action_error("profile_exact", seconds=0.2)
    assert target.cmd("app_hook") == hook
    target.cmd("app_hook", on=False)
    assert target.action("profile_exact", seconds=0.2)["cancelled"] is False


# ---------------------------------------------------------------------------------------------------------
# memory (tracemalloc)


def test_memory_diff_puts_the_leaking_line_first_and_stop_releases(spawn: Callable[[str], Target]) -> None:
    target = spawn("act_memory.py")
    script = str(TARGETS / "act_memory.py")
    leak_line = marker_line(TARGETS / "act_memory.py", "# LEAK-LINE")
    assert target.cmd("tracing") is False

    first = target.action("memory", frames=5)
    assert first["tracing"] is True and first["started"] is True and first["diff"] == []
    assert target.cmd("tracing") is True

    target.cmd("leak", count=2000, size=1024)
    second = target.action("memory")
    assert second["started"] is False and second["tracing"] is True
    assert second["traced_bytes"] >= 2000 * 1024 and second["peak_bytes"] >= second["traced_bytes"]
    assert second["overhead_bytes"] > 0 and second["snapshot_at"] >= first["snapshot_at"]
    growth = second["diff"][0]
    assert (growth["file"], growth["line"]) == (script, leak_line)
    assert growth["size_diff_bytes"] >= 2000 * 1024 and growth["count_diff"] >= 2000
    assert growth["size_bytes"] >= growth["size_diff_bytes"]
    assert growth["traceback"][-1] == {"file": script, "line": leak_line}
    assert 1 < len(growth["traceback"]) <= 5
    assert (second["top"][0]["file"], second["top"][0]["line"]) == (script, leak_line)
    every_file = [row["file"] for row in second["top"] + second["diff"]]
    assert not [f for f in every_file if "perftop/agent" in f or f.endswith("tracemalloc.py")]

    # Nothing new leaked: the next diff has no growth at the leak line.
    third = target.action("memory")
    assert (script, leak_line) not in [
        (d["file"], d["line"]) for d in third["diff"] if d["size_diff_bytes"] > 0
    ]

    stopped = target.action("memory", stop=True)
    assert stopped["tracing"] is False
    assert target.cmd("tracing") is False

    restarted = target.action("memory")
    assert restarted["started"] is True and restarted["diff"] == []
    target.action("memory", stop=True)
    assert target.cmd("tracing") is False


# ---------------------------------------------------------------------------------------------------------
# gc


def test_gc_collects_the_cycles_and_reports_consistent_counts(spawn: Callable[[str], Target]) -> None:
    target = spawn("act_gc.py")
    cycles = 5000
    target.cmd("make_cycles", count=cycles)
    result = target.action("gc", count_objects=True)

    assert result["collected"] >= cycles
    assert len(result["collected_by_generation"]) == 3
    assert sum(result["collected_by_generation"]) == result["collected"]
    assert len(result["counts_before"]) == len(result["counts_after"]) == 3
    assert result["counts_before"][0] >= cycles // 2
    assert result["counts_after"][0] < result["counts_before"][0]
    assert result["counts_after"][1:] == [0, 0]
    assert result["duration_ms"] >= 0
    assert result["rss_before_bytes"] > 0 and result["rss_after_bytes"] > 0
    assert result["uncollectable"] == 0
    assert result["objects_before"] - result["objects_after"] >= cycles * 0.9
    assert target.cmd("gc_state")["enabled"] is False

    target.cmd("make_cycles", count=100)
    young = target.action("gc", generation=0)
    assert young["collected_by_generation"][1:] == [0, 0]
    assert young["objects_before"] is None and young["objects_after"] is None


# ---------------------------------------------------------------------------------------------------------
# threads


def _stack_functions(entry: dict[str, Any]) -> list[str]:
    return [frame["function"] for frame in entry["stack"]]


def test_threads_show_names_stacks_and_asyncio_tasks(spawn: Callable[[str], Target]) -> None:
    target = spawn("act_threads.py")
    wait_for(lambda: target.cmd("ready"), 15, "threads and tasks to block")
    script = str(TARGETS / "act_threads.py")
    result = target.action("threads")
    assert isinstance(result, list)
    by_name = {entry["name"]: entry for entry in result}
    for entry in result:
        assert {"name", "ident", "native_id", "daemon", "stack", "perftop"} <= set(entry)
        assert all(set(frame) == {"file", "line", "function"} for frame in entry["stack"])

    sleep_entry = by_name["blocker-sleep"]
    assert sleep_entry["stack"][-1] == {
        "file": script,
        "line": marker_line(TARGETS / "act_threads.py", "time.sleep(3600)"),
        "function": "sleeper",
    }
    assert sleep_entry["daemon"] is True and sleep_entry["perftop"] is False
    assert _stack_functions(by_name["blocker-lock"])[-1] == "lock_waiter"
    event_functions = _stack_functions(by_name["blocker-event"])
    assert "event_waiter" in event_functions and event_functions[-1] == "Condition.wait"
    assert by_name["MainThread"]["daemon"] is False and by_name["MainThread"]["perftop"] is False
    own = [entry for entry in result if entry["name"].startswith("perftop-action")]
    assert len(own) == 1 and own[0]["perftop"] is True
    assert "thread_dump" in _stack_functions(own[0])

    watched = {task["name"]: task for task in by_name["loop-watched"]["tasks"]}
    assert {"ticker", "nested"} <= set(watched)
    assert watched["ticker"]["coro"] == "ticker" and watched["ticker"]["state"] == "pending"
    nested = watched["nested"]
    assert nested["coro"] == "outer_wait"
    functions = [frame["function"] for frame in nested["stack"]]
    assert functions[:2] == ["outer_wait", "inner_wait"]
    assert nested["waiting_on"] == "Future"
    hidden = {task["name"]: task for task in by_name["loop-hidden"]["tasks"]}
    assert hidden["hidden-task"]["coro"] == "hidden_worker"
    assert "tasks" not in by_name["blocker-sleep"]

    without_scan = {entry["name"]: entry for entry in target.action("threads", scan_loops=False)}
    assert "tasks" not in without_scan["loop-hidden"]
    assert {"ticker", "nested"} <= {task["name"] for task in without_scan["loop-watched"]["tasks"]}
