"""Names that come from the monitored app (metrics, gauges, SQL, paths, command lines) are shown as they
are: never read as Textual markup, which would hide part of them, run a `[@click=...]` action, or crash
the viewer on an unbalanced `[/]`."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from rich.text import Text
from textual.widgets import DataTable, Static

from perftop.collectors.agent_view import AgentView
from perftop.collectors.model import ProcessSample
from perftop.tui.app import PerftopApp
from perftop.tui.panes.process import ProcessPane
from perftop.tui.panes.queries import QueriesPane
from perftop.tui.panes.timings import TimingsPane
from tests.tui import fixed
from tests.tui.waiting import wait_for

METRIC = "cache[hit] a[/]b"
GAUGE = "[@click=app.quit]queue[/]"
FINGERPRINT = "SELECT tags[?] FROM t WHERE x = ? [/]"
COMMAND = ("python3", "app.py", "--label", "[bold]prod[/bold]", "[/]")


class HostileSources(fixed.FixedSources):
    def agent(self, pid: int, window: float | None) -> AgentView | None:
        view = fixed.agent_view()
        timings = {METRIC if name == "checkout" else name: row for name, row in view.timings.items()}
        sketches = {METRIC if name == "checkout" else name: sk for name, sk in view.sketches.items()}
        queries: dict[str, Any] = copy.deepcopy(fixed.QUERY_STATS)
        queries["queries"][0]["fingerprint"] = FINGERPRINT
        queries["queries"][0]["share_percent"] = 99.0
        queries["queries"][0]["total_ms"] = 9999.0
        queries["slow_queries"][0]["call_site"]["file"] = "/srv/[b]shop/views.py"
        return replace(
            view, timings=timings, sketches=sketches, gauges={GAUGE: 17.0}, queries=queries, counters={}
        )

    def process(self, pid: int) -> ProcessSample:
        return replace(super().process(pid), cmdline=COMMAND)


def cells(table: DataTable[Any]) -> list[str]:
    return [str(cell) for row in range(table.row_count) for cell in table.get_row_at(row)]


async def test_app_supplied_names_are_shown_verbatim() -> None:
    app = PerftopApp(sources=HostileSources(), pid=202, interval=0.1)
    async with app.run_test(size=(160, 50)) as pilot:
        process = app.query_one(ProcessPane)
        await wait_for(pilot, lambda: process.sample is not None)
        await pilot.pause(0.2)
        assert "--label [bold]prod[/bold] [/]" in str(process.query_one("#head", Static).render())
        await pilot.press("2")
        timings = app.query_one(TimingsPane)
        await wait_for(pilot, lambda: timings.view is not None)
        await pilot.pause(0.2)
        assert METRIC in cells(timings.query_one(DataTable))
        assert all(isinstance(c, Text) for c in timings.query_one(DataTable).get_row_at(0))
        assert f"{GAUGE} = 17" in str(timings.query_one("#counters", Static).render())
        await pilot.press("3")
        queries = app.query_one(QueriesPane)
        await wait_for(pilot, lambda: queries.stats is not None)
        await pilot.pause(0.2)
        assert FINGERPRINT in cells(queries.query_one("#query-table", DataTable))
        assert "…/[b]shop/views.py:120 in search" in cells(queries.query_one("#slow-table", DataTable))
        assert FINGERPRINT in str(queries.query_one("#selected", Static).render())
        assert app.is_running
