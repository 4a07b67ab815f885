"""Tables fed every tick are updated in place: rows keep their keys (no clear and rebuild), only changed
cells are rewritten, rows that left go, new ones come, and the cursor stays on the same row when the
order changes. Also: the timings pane keeps its rows across ticks."""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets import DataTable

from perftop.collectors.agent_view import AgentView, build_view
from perftop.tui.app import PerftopApp
from perftop.tui.panes.live import sync_rows
from perftop.tui.panes.process import ProcessPane
from perftop.tui.panes.timings import TimingsPane
from tests.tui.fixed import FixedSources
from tests.tui.test_app import make_app
from tests.tui.waiting import wait_for
from tests.unit.test_view_rows import WORKERS, worker_stats


class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        table: DataTable[Text] = DataTable(cursor_type="row")
        table.add_column("name", key="name")
        table.add_column("value", key="value")
        yield table


def shown(table: DataTable[Text]) -> list[list[str]]:
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def test_sync_rows_updates_in_place_and_keeps_the_cursor_on_its_row() -> None:
    app = TableApp()
    async with app.run_test() as pilot:
        table = app.query_one(DataTable)
        sync_rows(table, [("a", ["a", "1"]), ("b", ["b", "2"]), ("c", ["c", "3"])])
        table.move_cursor(row=1)
        keys = {key.value: key for key in table.rows}
        untouched = table.get_cell("c", "name")
        sync_rows(table, [("c", ["c", "30"]), ("b", ["b", "2"]), ("d", ["d", "4"])])
        await pilot.pause()
        assert shown(table) == [["c", "30"], ["b", "2"], ["d", "4"]]
        assert table.get_cell("c", "name") is untouched  # an unchanged cell is not rewritten
        assert all(keys[k] in table.rows for k in ("b", "c"))  # the same rows, not rebuilt
        assert "a" not in table.rows
        assert table.coordinate_to_cell_key(table.cursor_coordinate).row_key == "b"
        sync_rows(table, [("c", ["c", "30"]), ("d", ["d", "4"])])  # the cursor's row left: to the top
        assert table.cursor_row == 0


async def test_the_timings_table_is_not_rebuilt_each_tick() -> None:
    app, sources = make_app(pid=202)
    async with app.run_test(size=(140, 45)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.focused, ProcessPane))
        await pilot.press("2")
        pane = app.query_one(TimingsPane)
        table = pane.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 3)
        keys = list(table.rows)
        ticks = sources.calls
        await wait_for(pilot, lambda: sources.calls >= ticks + 3)
        await pilot.pause()
        assert all(a is b for a, b in zip(keys, table.rows, strict=True))
        assert [str(table.get_row_at(i)[0]) for i in range(3)] == [row.label for row in pane.rows()]


async def test_a_key_given_twice_shows_both_rows() -> None:
    app = TableApp()
    async with app.run_test():
        table = app.query_one(DataTable)
        sync_rows(table, [("a", ["a", "1"]), ("a", ["a", "2"])])
        sync_rows(table, [("a", ["a", "1"]), ("a", ["a", "3"])])
        assert shown(table) == [["a", "1"], ["a", "3"]]


class WorkerSources(FixedSources):
    """Three workers' agents, merged as the live collector merges them."""

    def agent(self, pid: int, window: float | None) -> AgentView | None:
        results = {p: worker_stats(p) for p in WORKERS}
        return build_view(results, {p: {"pid": p, "name": "shop"} for p in WORKERS}, window, WORKERS[0])


async def test_b_adds_each_workers_row_under_its_metric_and_removes_them() -> None:
    app = PerftopApp(sources=WorkerSources(), pid=202, interval=0.1)
    async with app.run_test(size=(140, 45)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.focused, ProcessPane))
        await pilot.press("2")
        pane = app.query_one(TimingsPane)
        table = pane.query_one(DataTable)
        await wait_for(pilot, lambda: table.row_count == 3)
        merged = [str(table.get_row_at(i)[0]) for i in range(3)]
        await pilot.press("b")
        await wait_for(pilot, lambda: table.row_count == 9)
        labels = [str(table.get_row_at(i)[0]) for i in range(9)]
        assert [label for label in labels if not label.startswith("  └")] == merged
        checkout = labels.index("checkout")
        assert labels[checkout + 1 : checkout + 3] == ["  └ pid 301", "  └ pid 303"]
        await pilot.press("b")
        await wait_for(pilot, lambda: table.row_count == 3)
        assert [str(table.get_row_at(i)[0]) for i in range(3)] == merged
