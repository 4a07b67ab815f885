"""A read-only TUI (what `perftop web` serves without --allow-actions) sends no request that changes the
target, whichever way it is asked (key, command palette, a direct agent call), and says why; the keys that
only read keep working. The fixed sources record every request the app sends to the agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.widgets import DataTable, Label

from perftop.tui import app as app_module
from perftop.tui.app import PerftopApp
from perftop.tui.panes.actions import ActionsPane
from perftop.tui.panes.attached import AttachedView
from perftop.tui.panes.process import ProcessPane
from perftop.tui.panes.queries import QueriesPane
from perftop.tui.screens.confirm import Confirm
from perftop.tui.screens.explain import ExplainView
from tests.tui.fixed import FixedSources
from tests.tui.waiting import wait_for


class NotingApp(PerftopApp):
    """The app, keeping the text of every notification it shows."""

    CSS_PATH = str(Path(app_module.__file__).with_name("app.tcss"))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notes: list[str] = []

    def notify(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.notes.append(message)
        super().notify(message, *args, **kwargs)


def notices(app: NotingApp) -> list[str]:
    return app.notes


async def test_a_read_only_app_refuses_what_changes_the_target_and_says_why() -> None:
    sources = FixedSources()
    app = NotingApp(sources=sources, pid=202, interval=0.1, read_only=True)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.focused, ProcessPane))
        assert "· read-only ·" in str(app.query_one("#status", Label).render())
        for key, what in (("g", "forced GC"), ("m", "memory tracing"), ("M", "memory tracing")):
            await pilot.press(key)
            await wait_for(
                pilot, lambda what=what: any(n.startswith(f"{what} refused") for n in notices(app))
            )
        await pilot.press("i")
        await wait_for(pilot, lambda: any(n.startswith("injecting an agent refused") for n in notices(app)))
        assert not isinstance(app.screen, Confirm)
        assert "read-only (perftop web --allow-actions allows it)" in notices(app)[0]
        # The command palette's entries and a direct agent call take the same road.
        app.query_one(AttachedView).action_run("gc")
        assert not app.agent_call("action", {"name": "memory"}, app.query_one(ActionsPane))
        assert not app.agent_call(
            "explain", {"fingerprint": "x", "analyze": True}, app.query_one(QueriesPane)
        )
        await pilot.pause(0.2)
        assert sources.requests == []
        # EXPLAIN ANALYZE is refused before its confirmation; plain EXPLAIN and the thread dump still go.
        await pilot.press("3")
        pane = app.query_one(QueriesPane)
        await wait_for(pilot, lambda: pane.stats is not None)
        await pilot.press("E")
        await wait_for(pilot, lambda: any(n.startswith("EXPLAIN ANALYZE refused") for n in notices(app)))
        assert not isinstance(app.screen, Confirm) and sources.requests == []
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, ExplainView))
        assert sources.requests == [
            ("explain", {"fingerprint": pane.rows()[0]["fingerprint"], "analyze": False, "confirm": False})
        ]
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ExplainView))
        pane.query_one(DataTable).focus()
        await pilot.press("t")
        await wait_for(pilot, lambda: len(sources.requests) == 2)
        assert sources.requests[-1] == ("action", {"name": "threads"})


async def test_the_same_keys_reach_the_agent_when_actions_are_allowed() -> None:
    sources = FixedSources()
    app = NotingApp(sources=sources, pid=202, interval=0.1)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.focused, ProcessPane))
        assert "read-only" not in str(app.query_one("#status", Label).render())
        await pilot.press("g")
        await wait_for(pilot, lambda: sources.requests == [("action", {"name": "gc"})])
        assert not any("refused" in n for n in notices(app))
