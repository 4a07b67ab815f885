"""The queries pane on what a real ORM app sends: SQLAlchemy-generated statements (models with a dozen
columns, joins, subqueries), fingerprinted by perftop's normalizer, at 80x24 and 200x50."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

from perftop.collectors.agent_view import AgentView
from perftop.tui.app import PerftopApp
from perftop.tui.panes.process import ProcessPane
from perftop.tui.panes.queries import QueriesPane
from tests.tui import fixed
from tests.tui.waiting import wait_for
from tests.unit.test_compact_sql import FOLLOWERS, FOLLOWERS_COUNT, FOLLOWING, INSERT, TIMELINE, UPDATE

ORM = [FOLLOWERS, FOLLOWING, TIMELINE, FOLLOWERS_COUNT, INSERT, UPDATE]


def orm_row(fp: str, n: int) -> dict[str, Any]:
    return {
        **fixed.QUERY_STATS["queries"][0],
        "fingerprint": fp,
        "count": 100 * (n + 1),
        "total_ms": 1000.0 - 100 * n,
        "share_percent": 15.0 - n,
        "n_plus_one": False,
        "n_plus_one_site": None,
    }


class OrmSources(fixed.FixedSources):
    def agent(self, pid: int, window: float | None) -> AgentView | None:
        view = super().agent(pid, window)
        if view is None:
            return None
        queries = {**fixed.QUERY_STATS, "queries": [orm_row(fp, n) for n, fp in enumerate(ORM * 2)]}
        return dataclasses.replace(view, queries=queries)


async def _queries_ready(pilot: Pilot[Any]) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.focused, ProcessPane))
    await pilot.press("3")
    await wait_for(pilot, lambda: app.query_one(QueriesPane).stats is not None)
    await pilot.pause()


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_queries_of_an_orm_app(snap_compare: Callable[..., bool], size: tuple[int, int]) -> None:
    app = PerftopApp(sources=OrmSources(), pid=202, interval=3600)
    assert snap_compare(app, terminal_size=size, run_before=_queries_ready)


async def test_at_80x24_six_fingerprints_show_and_those_differing_in_their_tail_look_different() -> None:
    app = PerftopApp(sources=OrmSources(), pid=202, interval=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        await _queries_ready(pilot)
        table = app.query_one("#query-table", DataTable)
        visible = table.scrollable_content_region.height - 1  # less the header row
        assert visible >= 6, f"only {visible} query rows fit at 80x24"
        shown = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        following, followers = shown[ORM.index(FOLLOWING)], shown[ORM.index(FOLLOWERS)]
        assert following != followers
        assert following.endswith("lowed_id = ?") and followers.endswith("lower_id = ?")


class NPlusOneSources(fixed.FixedSources):
    """The N+1 fingerprint of a Django list view as perftop reported it: long, with the database's time."""

    def agent(self, pid: int, window: float | None) -> AgentView | None:
        view = super().agent(pid, window)
        if view is None:
            return None
        n1 = {
            **fixed.QUERY_STATS["queries"][0],
            "fingerprint": FOLLOWERS,
            "server_mean_ms": 0.02,
            "n_plus_one_site": {"file": "/srv/shop/templates/books.html", "line": 3, "function": "template"},
            "routes": ["GET /books/"],
        }
        return dataclasses.replace(view, queries={**fixed.QUERY_STATS, "queries": [n1]})


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_the_n_plus_one_site_of_a_long_fingerprint_is_on_screen(size: tuple[int, int]) -> None:
    """The line under the table says where the N+1 loop is, whatever room the fingerprint takes."""
    app = PerftopApp(sources=NPlusOneSources(), pid=202, interval=3600)
    async with app.run_test(size=size) as pilot:
        await _queries_ready(pilot)
        selected = app.query_one(QueriesPane).query_one("#selected")
        await wait_for(pilot, lambda: selected.size.height > 0 and "N+1" in str(selected.render()))
        shown = "".join(selected.render_line(y).text for y in range(selected.size.height))
        assert "books.html:3" in shown, shown
        if size[0] >= 120:  # which route runs the loop (at 80 columns the site takes the line)
            assert "books.html:3 in template · route GET /books/" in shown, shown
