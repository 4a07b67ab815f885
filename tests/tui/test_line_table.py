"""LineTable: each row is one terminal line, whatever characters its text holds."""

from __future__ import annotations

from textual.app import App, ComposeResult

from perftop.tui.widgets.proctable import LineTable


class _TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield LineTable(id="table")


async def test_control_characters_never_reach_the_terminal() -> None:
    app = _TableApp()
    async with app.run_test(size=(40, 5)) as pilot:
        table = app.query_one(LineTable)
        table.set_rows(["bash -c a=1\nb=2\tc", "evil \x1b[2J\x1b]0;title\x07 name\r", "plain"])
        await pilot.pause()
        lines = [table.render_line(y).text for y in range(3)]
        assert lines[0].rstrip() == "bash -c a=1 b=2 c"
        assert lines[1].rstrip() == "evil  [2J ]0;title  name"
        assert lines[2].rstrip() == "plain"
        assert all(len(line) == 40 for line in lines)
        assert not any(ch < " " or ch == "\x7f" for line in lines for ch in line)
