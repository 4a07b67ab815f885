"""What a tick redraws: a change in one widget must not make Textual redraw unrelated ones (its partial
update redraws every child of a container that overlaps the changed region)."""

from __future__ import annotations

from collections import Counter

import pytest
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from perftop.tui.app import PerftopApp
from perftop.tui.panes.process import LimitRow, ProcessPane
from tests.tui.fixed import FixedSources
from tests.tui.waiting import wait_for


async def test_a_new_head_line_does_not_redraw_the_limit_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: Counter[str] = Counter()
    render_lines = Widget.render_lines

    def counted(self: Widget, crop: Region) -> list[Strip]:
        drawn[self.id or type(self).__name__] += 1
        return render_lines(self, crop)

    monkeypatch.setattr(Widget, "render_lines", counted)
    app = PerftopApp(sources=FixedSources(), pid=202, interval=3600.0)

    def quiet() -> bool:
        """True if nothing was drawn since the last call."""
        nothing = not drawn
        drawn.clear()
        return nothing

    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.query_one(ProcessPane)
        await wait_for(pilot, lambda: pane.sample is not None and pane.query("#limit-nproc"))
        await wait_for(pilot, lambda: quiet(), what="a pause with nothing drawn (start-up over)")
        limit_rows = [row.id or "" for row in pane.query(LimitRow) if row.display]
        assert len(limit_rows) >= 5
        drawn.clear()
        pane.now += 3600.0  # the head's uptime changes, nothing else
        pane.sample = pane.sample
        await wait_for(pilot, lambda: drawn["head"], what="the head redrawn")
        assert not [row for row in limit_rows if drawn[row]], drawn
