"""Layout snapshots at 80x24 and 160x50, fed fixed data through the real sampler (one tick)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot

from perftop.tui.app import PerftopApp
from perftop.tui.panes.process import ProcessPane
from perftop.tui.panes.proclist import ProcessListPane
from perftop.tui.panes.system import SystemPane
from perftop.tui.panes.timings import TimingsPane
from tests.tui.fixed import FixedSources
from tests.tui.waiting import wait_for

SIZES = [(80, 24), (160, 50)]


def app_for(pid: int | None) -> PerftopApp:
    return PerftopApp(sources=FixedSources(), pid=pid, interval=3600)


async def _list_ready(pilot: Pilot[Any]) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: app.query_one(SystemPane).sample is not None)
    await wait_for(pilot, lambda: app.query_one(ProcessListPane).shown_pids)


async def _process_ready(pilot: Pilot[Any]) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: app.query_one(SystemPane).sample is not None)
    await wait_for(pilot, lambda: app.query_one(ProcessPane).has_class("-cgroup"))
    await pilot.pause()


async def _timings_ready(pilot: Pilot[Any]) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.focused, ProcessPane))
    await pilot.press("2")
    await wait_for(pilot, lambda: app.query_one(SystemPane).sample is not None)
    await wait_for(pilot, lambda: app.query_one(TimingsPane).view is not None)
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_process_list(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(app_for(None), terminal_size=size, run_before=_list_ready)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_attached_process(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(app_for(202), terminal_size=size, run_before=_process_ready)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_timings(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    assert snap_compare(app_for(202), terminal_size=size, run_before=_timings_ready)
