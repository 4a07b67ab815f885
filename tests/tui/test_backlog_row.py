"""The process pane shows each listening socket's accept backlog against its maximum, with the same bar
and warnings as a limit: the requests waiting that the app has not even seen."""

from __future__ import annotations

import dataclasses

from textual.widgets import Label

from perftop.collectors.model import ListenBacklog, ProcessSample
from perftop.tui.app import PerftopApp
from perftop.tui.panes.process import LimitRow, ProcessPane
from tests.tui import fixed
from tests.tui.waiting import wait_for


class Listening(fixed.FixedSources):
    def process(self, pid: int) -> ProcessSample:
        backlog = (ListenBacklog("127.0.0.1:8000", 120, 128), ListenBacklog("[::1]:8000", 0, None))
        return dataclasses.replace(super().process(pid), listen_backlog=backlog)


async def test_a_full_accept_queue_shows_as_a_nearly_full_bar() -> None:
    app = PerftopApp(sources=Listening(), pid=202, interval=3600)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.query_one(ProcessPane)
        await wait_for(pilot, lambda: pane.query("#limit-backlog"))
        row = pane.query_one("#limit-backlog", LimitRow)
        assert row.ratio == 120 / 128
        assert str(row.query_one(".values", Label).render()) == "120 queued of 128 on 127.0.0.1:8000"
        second = pane.query_one("#limit-backlog2", LimitRow)
        assert second.ratio is None and "0 queued of ? on [::1]:8000" in str(
            second.query_one(".values", Label).render()
        )
