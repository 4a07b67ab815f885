"""Layout snapshots of per-worker action results side by side (gc, memory) at 80x24 and 160x50.

The results are fixed documents of three workers, merged by the real `merge_action` and handed to the pane
by the real sources interface, as `LiveSources.call` hands the workers' own (see test_actions_workers.py for
the same layout on a real gunicorn)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from perftop.collectors.workers import merge_action
from perftop.tui.app import PerftopApp
from perftop.tui.panes.actions import ActionsPane
from perftop.tui.panes.attached import AttachedView
from perftop.tui.panes.process import ProcessPane
from perftop.tui.screens.target_picker import TargetPicker
from tests.tui.test_worker_table import MASTER, TreeSources
from tests.tui.waiting import wait_for

SIZES = [(80, 24), (160, 50)]
MiB = 1024**2
PIDS = (501, 502, 503)


def _gc(pid: int) -> dict[str, Any]:
    k = pid - 500
    return {
        "collected": 100 * k + 7,
        "collected_by_generation": [90 * k, 10 * k, 7],
        "duration_ms": 0.5 * k,
        "rss_before_bytes": (30 + 10 * k) * MiB,
        "rss_after_bytes": (30 + 10 * k) * MiB - k * 64 * 1024,
        "counts_before": [300, 4, 1],
        "counts_after": [0, 0, 0],
        "uncollectable": k - 1,
    }


def _memory(pid: int) -> dict[str, Any]:
    k = pid - 500
    sites = [
        ("/srv/shop/cache.py", 42, 64 * 1024 * k, 2 * k),
        ("/srv/shop/views.py", 120, 4096 * (4 - k), 10),
        ("/usr/lib/python3.11/json/decoder.py", 353, 512 * k, 3),
    ]
    return {
        "tracing": True,
        "started": False,
        "traced_bytes": (2 + k) * MiB,
        "peak_bytes": (3 + k) * MiB,
        "overhead_bytes": 300 * 1024,
        "top": [],
        "diff": [
            {"file": f, "line": n, "size_diff_bytes": b, "count_diff": c, "size_bytes": 4 * b}
            for f, n, b, c in sites
            if not (k == 2 and n == 353)  # one worker did not grow there
        ],
    }


class WorkerActions(TreeSources):
    """The master of three workers, whose actions answer with fixed per-worker results."""

    def call(
        self, pid: int, method: str, params: dict[str, Any], timeout: float, children: bool = True
    ) -> Any:
        name = params.get("name")
        if method != "action" or name not in ("gc", "memory"):
            return super().call(pid, method, params, timeout, children)
        make = _gc if name == "gc" else _memory
        results = {p: make(p) for p in PIDS}
        return {**merge_action(str(name), results), "per_pid": results}


def _after(key: str) -> Callable[[Pilot[Any]], Any]:
    async def run(pilot: Pilot[Any]) -> None:
        app = pilot.app
        view = app.query_one(AttachedView)
        await wait_for(pilot, lambda: app.query_one(ProcessPane).shown_workers)
        # the action keys are the attached view's: wait until the focus is inside it
        await wait_for(pilot, lambda: app.focused is not None and view in app.focused.ancestors_with_self)
        await pilot.press(key)
        await wait_for(pilot, lambda: isinstance(app.screen, TargetPicker))
        await pilot.press("enter")
        pane = app.query_one(ActionsPane)
        await wait_for(pilot, lambda: pane.last is not None and pane.running is None)
        await pilot.pause()

    return run


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_gc_of_three_workers(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    app = PerftopApp(sources=WorkerActions(), pid=MASTER, interval=3600)
    assert snap_compare(app, terminal_size=size, run_before=_after("g"))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_memory_of_three_workers(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    app = PerftopApp(sources=WorkerActions(), pid=MASTER, interval=3600)
    assert snap_compare(app, terminal_size=size, run_before=_after("m"))
