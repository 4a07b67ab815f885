"""The footer: the keys of where the focus is, one line, and a click on a key presses it."""

from __future__ import annotations

from textual.widgets import TabbedContent

from perftop.tui.app import PerftopApp
from perftop.tui.panes.proclist import ProcessListPane
from perftop.tui.widgets.footer import KeysFooter
from tests.tui.fixed import FixedSources
from tests.tui.waiting import wait_for


def _line(app: PerftopApp) -> str:
    return str(app.query_one(KeysFooter).render())


async def test_the_footer_follows_the_focus_and_a_click_presses_the_key() -> None:
    app = PerftopApp(sources=FixedSources(), interval=3600.0)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: " / Filter " in _line(app), what="the process list's keys")
        line = _line(app)
        assert " q Quit " in line and "^p palette" in line and "Timings" not in line

        plist = app.query_one(ProcessListPane)
        await wait_for(pilot, lambda: plist.shown_pids, what="the process list's rows")
        await pilot.press("enter")  # attach to the process under the cursor
        await wait_for(pilot, lambda: " p Profile " in _line(app), what="the attached view's keys")
        assert " / Filter " not in _line(app)

        line = _line(app)
        column = line.index(" ? Keys ") + 2  # on the key itself
        await pilot.click(KeysFooter, offset=(column, 0))
        await wait_for(pilot, lambda: app.screen.query("HelpPanel"), what="the key panel opened by the click")

        app.query_one(TabbedContent).active = "tab-timings"
        await pilot.press("2")
        await wait_for(pilot, lambda: " o Sort col " in _line(app), what="the timings tab's keys")
