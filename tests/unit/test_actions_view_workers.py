"""Per-worker renderings of fan-out action results: which worker's figure goes in which column, tables that
fit the width they are given, each worker's threads under its own heading."""

from __future__ import annotations

from typing import Any

from perftop.collectors.workers import merge_action
from perftop.render.actions import gc_side_by_side, per_worker, render_workers
from perftop.render.units import fmt_count

PIDS = list(range(4001, 4009))  # eight workers


def _gc(pid: int) -> dict[str, Any]:
    return {
        "collected": pid * 3,
        "collected_by_generation": [pid, pid, pid],
        "duration_ms": 1.0,
        "rss_before_bytes": pid * 1000,
        "rss_after_bytes": pid * 1000 - 500,
        "uncollectable": 0,
    }


def test_each_workers_own_result_by_pid_from_the_tui_and_from_the_cli_json() -> None:
    results = {pid: _gc(pid) for pid in PIDS[:3]}
    fanned = {**merge_action("gc", results), "per_pid": results}
    assert per_worker("gc", fanned) == results
    as_cli = {**merge_action("gc", results), "per_pid": {str(p): r for p, r in reversed(results.items())}}
    assert list(per_worker("gc", as_cli)) == PIDS[:3]  # numeric keys, in PID order
    assert per_worker("gc", _gc(PIDS[0])) == {}  # one process: nothing side by side
    assert per_worker("gc", {**_gc(PIDS[0]), "per_pid": {PIDS[0]: _gc(PIDS[0])}}) == {}


def test_columns_hold_each_workers_figure_and_wrap_to_the_width() -> None:
    results = {pid: _gc(pid) for pid in PIDS}
    for width in (60, 80, 160):
        text = gc_side_by_side(results, width)
        assert max(len(line) for line in text.splitlines()) <= width
        headers = [line.split() for line in text.splitlines() if line.startswith(" " * 16)]
        assert sorted(int(p) for h in headers for p in h[1:]) == PIDS  # each worker in exactly one block
        collected = [line.split()[1:] for line in text.splitlines() if line.startswith("collected")]
        for head, row in zip(headers, collected, strict=True):
            assert row[0] == fmt_count(sum(p * 3 for p in PIDS))  # "all", in every block
            assert row[1:] == [fmt_count(int(p) * 3) for p in head[1:]]


def test_threads_are_grouped_by_worker_under_their_own_names() -> None:
    dumps = {
        pid: [
            {"name": "MainThread", "ident": 1, "native_id": pid, "stack": []},
            {"name": f"pool-{pid}", "ident": 2, "native_id": pid + 1, "stack": []},
        ]
        for pid in PIDS[:2]
    }
    merged = merge_action("threads", dumps)
    grouped = per_worker("threads", merged)
    assert {pid: [t["name"] for t in ts] for pid, ts in grouped.items()} == {
        pid: [t["name"] for t in ts] for pid, ts in dumps.items()
    }
    text = render_workers("threads", merged)
    for pid in PIDS[:2]:
        section = text.split(f"── worker {pid}: 2 threads ──\n", 1)[1].split("── worker", 1)[0]
        assert f"thread pool-{pid} (ident 2" in section


def test_workers_where_the_action_failed_are_named() -> None:
    results = {pid: _gc(pid) for pid in PIDS[:2]}
    fanned = {**merge_action("gc", results), "per_pid": results, "errors": {PIDS[2]: "timed out"}}
    assert render_workers("gc", fanned).splitlines()[0] == f"failed in PID {PIDS[2]}: timed out"
