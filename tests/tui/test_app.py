"""Behaviour of the TUI with Pilot: list, filter, sort, attach, detach, pause, interval, exit, timings."""

from __future__ import annotations

import json

import pytest
from textual.widgets import ContentSwitcher, DataTable, Label, Static, TabbedContent

from perftop.tui.app import PerftopApp
from perftop.tui.panes.process import ProcessPane
from perftop.tui.panes.proclist import ProcessListPane
from perftop.tui.panes.queries import QueriesPane
from perftop.tui.panes.system import SystemPane
from perftop.tui.panes.timings import TimingsPane
from perftop.tui.screens.confirm import Confirm
from perftop.tui.screens.explain import ExplainView
from perftop.tui.screens.metric_detail import MetricDetail
from perftop.tui.themes import resolve_theme
from perftop.tui.widgets.bar import UsageBar
from tests.tui.fixed import EXPLAIN_RESULT, FixedSources
from tests.tui.waiting import wait_for


def make_app(pid: int | None = None, with_agent: bool = True) -> tuple[PerftopApp, FixedSources]:
    sources = FixedSources(with_agent=with_agent)
    return PerftopApp(sources=sources, pid=pid, interval=0.1), sources


async def test_list_sorted_by_cpu_then_cycles_sort() -> None:
    app, _ = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        plist = app.query_one(ProcessListPane)
        await wait_for(pilot, lambda: plist.shown_pids)
        assert plist.shown_pids == [202, 101, 404, 303]
        await pilot.press("s")
        assert plist.sort == "mem"
        assert plist.shown_pids == [404, 101, 202, 303]
        await pilot.press("s")
        assert plist.shown_pids == [101, 202, 303, 404]
        await pilot.press("s")
        assert plist.sort == "name"
        assert plist.shown_pids == [303, 404, 101, 202]
        await pilot.press("f6")  # htop's sort key does the same
        assert plist.sort != "name"
        await pilot.press("f3")  # and its search key opens the filter
        await pilot.press("p", "o", "s", "t")
        assert plist.filter_text == "post"


async def test_filter_by_name_and_cmdline_then_escape_clears() -> None:
    app, _ = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        plist = app.query_one(ProcessListPane)
        await wait_for(pilot, lambda: plist.shown_pids)
        await pilot.press("slash", "p", "o", "s", "t")
        assert plist.filter_text == "post"
        assert plist.shown_pids == [101]
        await pilot.press("backspace", "backspace", "backspace", "backspace", "a", "p", "p", ".", "p", "y")
        assert plist.shown_pids == [202]  # matches the command line, not the name
        await pilot.press("escape")
        assert plist.filter_text == ""
        assert len(plist.shown_pids) == 4
        assert app.attached is None  # escape in the list does not leave the app


async def test_enter_attaches_and_backspace_detaches() -> None:
    app, _ = make_app()
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        plist = app.query_one(ProcessListPane)
        await wait_for(pilot, lambda: plist.shown_pids)
        await pilot.press("down")  # second row: postgres, 101
        await pilot.press("enter")
        assert app.attached == 101
        assert app.query_one("#main", ContentSwitcher).current == "attached"
        pane = app.query_one(ProcessPane)
        await wait_for(pilot, lambda: pane.sample is not None and pane.sample.pid == 101)
        await wait_for(pilot, lambda: pane.query("#limit-nofile"))
        assert "870" in str(pane.query_one("#limit-nofile .values").render())
        app.notify("a notification over the attached view")
        await pilot.pause()
        assert app.screen.query("Toast")
        await pilot.press("escape")  # closes the notification, never the attached view
        await wait_for(pilot, lambda: not app.screen.query("Toast"))
        await pilot.press("escape")
        assert app.attached == 101
        await pilot.press("backspace")
        assert app.attached is None
        assert app.query_one("#main", ContentSwitcher).current == "list"
        assert plist.selected_pid == 101


async def test_pause_freezes_sampling_and_interval_keys() -> None:
    app, sources = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: sources.calls >= 2)
        await pilot.press("space")
        assert app.paused and app.sampler.paused
        assert "PAUSED" in str(app.query_one("#status").render())
        before = sources.calls
        await pilot.pause(0.5)
        assert sources.calls <= before + 1  # at most the tick that was already under way
        await pilot.press("space")
        await wait_for(pilot, lambda: sources.calls > before + 1)
        assert app.interval == 0.1
        await pilot.press("plus")
        assert app.interval == 0.25 and app.sampler.interval == 0.25
        await pilot.press("plus", "plus")
        assert app.interval == 1.0
        await pilot.press("minus")
        assert app.interval == 0.5
        assert "every 0.5s" in str(app.query_one("#status").render())


async def test_process_exit_keeps_last_values() -> None:
    app, sources = make_app(pid=202)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.query_one(ProcessPane)
        await wait_for(pilot, lambda: pane.sample is not None)
        sources.exit_pid(202)
        await wait_for(pilot, lambda: pane.gone is not None)
        assert pane.has_class("-gone")
        assert "exited" in str(pane.query_one("#gone").render())
        assert pane.sample is not None and pane.sample.pid == 202  # last values kept
        assert "python3" in str(pane.query_one("#head").render())
        await pilot.press("h")  # and the app still works
        assert app.attached is None


async def test_system_pane_shows_rates_and_cores() -> None:
    app, _ = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.query_one(SystemPane)
        await wait_for(pilot, lambda: pane.sample is not None)
        assert "37.5%" in str(pane.query_one("#cpu-text").render())
        assert "1.0 MiB/s" in str(pane.query_one("#disk-text").render())
        assert "512.0 KiB/s" in str(pane.query_one("#net-text").render())
        assert "cores [▄▂] 50 25%" in str(pane.query_one("#cores").render())
        assert "psi cpu 3.5% memory 0.0% io 1.2%" in str(pane.query_one("#cores").render())


async def test_timings_pane_window_sort_and_detail() -> None:
    app, _ = make_app(pid=202)
    async with app.run_test(size=(140, 45)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.focused, ProcessPane))
        await pilot.press("2")
        assert app.query_one(TabbedContent).active == "tab-timings"
        pane = app.query_one(TimingsPane)
        await wait_for(pilot, lambda: pane.view is not None)
        table = pane.query_one(DataTable)
        assert table.has_focus
        await wait_for(pilot, lambda: table.row_count == 3)
        assert next(r["name"] for r in pane.rows()) == "checkout"  # highest p99 first
        await pilot.press("w")
        assert app.sampler.window == 10.0
        assert "window 10 s" in str(pane.border_title)
        assert "window 10 s" in str(app.query_one(QueriesPane).border_title)  # w changes every pane
        await pilot.press("o")
        assert pane.sort == "p999_ms"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, MetricDetail))
        assert isinstance(app.screen, MetricDetail)
        assert app.screen.metric == "checkout"
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, MetricDetail))


async def test_no_agent_explains_how_to_instrument() -> None:
    app, _ = make_app(pid=202, with_agent=False)
    async with app.run_test(size=(120, 40)) as pilot:
        app.query_one(TabbedContent).active = "tab-timings"
        pane = app.query_one(TimingsPane)
        await wait_for(pilot, lambda: pane.has_class("-no-agent"))
        assert "perftop.start()" in str(pane.query_one("#timings-help").render())


@pytest.mark.parametrize(
    ("key", "pane_type", "no_data"), [("2", TimingsPane, "-no-agent"), ("3", QueriesPane, "-empty")]
)
async def test_tab_opened_before_the_first_data_gives_its_table_the_keys(
    key: str, pane_type: type[TimingsPane | QueriesPane], no_data: str
) -> None:
    """A tab's number pressed before the agent's first data: the pane holds the focus (its table is hidden)
    and hands it to the table when the data comes, so that the arrows move the cursor without a Tab."""
    app, sources = make_app(pid=202, with_agent=False)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.focused, ProcessPane))
        pane = app.query_one(pane_type)
        await wait_for(pilot, lambda: pane.has_class(no_data), what=f"the pane's {no_data} state")
        await pilot.press(key)
        assert app.focused is pane
        sources.with_agent = True
        table = pane.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count >= 2, what="the agent's rows in the table")
        assert app.focused is table
        await pilot.press("down")
        assert table.cursor_row == 1


async def test_queries_pane_sorted_by_total_with_n_plus_one_and_explain() -> None:
    app, sources = make_app(pid=202)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.focused, ProcessPane))
        await pilot.press("3")
        pane = app.query_one(QueriesPane)
        await wait_for(pilot, lambda: pane.stats is not None)
        assert [q["count"] for q in pane.rows()] == [45, 880]  # by total time
        assert "N+1" in str(pane.query_one("#query-table", DataTable).get_row_at(1))
        await pilot.press("down")
        assert "/srv/shop/views.py:165" in str(pane.query_one("#selected").render())
        await pilot.press("slash", *"status")
        assert len(pane.rows()) == 1
        await pilot.press("enter")  # keeps the filter, back to the table
        assert pane.filter_text == "status" and pane.query_one("#query-table").has_focus
        await pilot.press("escape")
        assert pane.filter_text == "" and len(pane.rows()) == 2
        await pilot.press("up", "e")
        await wait_for(pilot, lambda: isinstance(app.screen, ExplainView))
        assert sources.requests[-1] == (
            "explain",
            {"fingerprint": pane.rows()[0]["fingerprint"], "analyze": False, "confirm": False},
        )
        assert "full scan of orders filtered on status" in str(app.screen.query_one("#advice-0").render())
        texts = [str(label.render()) for label in app.screen.query(Label)]
        assert any("CREATE INDEX ix_orders_status ON orders (status)" in t for t in texts)
        plan = app.screen.query_one("#plan", Static)
        assert str(plan.render()).splitlines() == ["SCAN orders", "     ! full table scan"]
        await pilot.press("r")  # the plan as the database returned it
        assert json.loads(str(plan.render())) == EXPLAIN_RESULT["plan"]
        await pilot.press("r")
        assert str(plan.render()).startswith("SCAN orders")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, ExplainView))
        # ANALYZE asks first; declining sends nothing
        await pilot.press("E")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("n")
        await pilot.pause(0.2)
        assert len(sources.requests) == 1
        await pilot.press("E")
        await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("y")
        await wait_for(pilot, lambda: isinstance(app.screen, ExplainView))
        assert sources.requests[-1][1]["analyze"] is True and sources.requests[-1][1]["confirm"] is True


async def test_second_explain_while_one_runs_is_refused() -> None:
    app, sources = make_app(pid=202)
    sources.hold.clear()
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.focused, ProcessPane))
        await pilot.press("3")
        pane = app.query_one(QueriesPane)
        await wait_for(pilot, lambda: pane.stats is not None)
        await pilot.press("e")
        assert pane.explaining is not None
        await pilot.press("e")
        await pilot.pause(0.2)
        assert len(sources.requests) == 1
        sources.hold.set()
        await wait_for(pilot, lambda: isinstance(app.screen, ExplainView), timeout=10)
        assert len(sources.requests) == 1


async def test_resizing_down_to_tiny_and_back_never_crashes() -> None:
    app, _ = make_app(pid=202)
    async with app.run_test(size=(160, 50)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.focused, ProcessPane))
        for tab in ("1", "2", "3", "4"):
            await pilot.press(tab)
            for size in ((80, 24), (40, 12), (20, 5), (200, 60), (80, 24)):
                await pilot.resize_terminal(*size)
                await pilot.pause()
        assert app.is_running
        assert app.query_one(ProcessPane).sample is not None


@pytest.mark.parametrize("theme", ["perftop-dark", "perftop-light", "perftop-contrast"])
async def test_themes_load_and_warnings_read_without_colour(theme: str) -> None:
    _, themes = resolve_theme(theme)
    app = PerftopApp(sources=FixedSources(), pid=202, interval=0.1, theme_name=theme, themes=themes)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = app.query_one(ProcessPane)
        await wait_for(pilot, lambda: pane.query("#limit-nproc UsageBar.-error"))
        assert app.theme == theme
        nofile = pane.query_one("#limit-nofile UsageBar", UsageBar)
        nproc = pane.query_one("#limit-nproc UsageBar", UsageBar)
        assert nofile.has_class("-warning") and str(nofile.render()).rstrip().endswith(" 85%!")
        assert str(nproc.render()).rstrip().endswith(" 97%!!")
