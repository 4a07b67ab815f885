"""A table drawn line by line: only the lines whose text changed since the last update are repainted.

`DataTable` re-renders every visible cell on any update (its caches are keyed by a global update count) and
re-measures every cell after `clear()`; at one update a second that is most of the process list's cost.
Here each row is one pre-formatted line; `set_rows` compares it with what is on screen and refreshes only
the lines that differ, and rendered lines are cached by (text, style, width).
"""

from __future__ import annotations

from rich.segment import Segment
from textual import events
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

_CONTROLS = dict.fromkeys([*range(32), 127], " ")
"""Control characters as spaces: a newline or an escape in a line (a command line may hold either) would
otherwise reach the terminal raw, scroll it, or start an escape sequence."""


class LineTable(ScrollView, can_focus=True):
    """Rows of pre-formatted text with a row cursor. Enter is left to the parent's bindings."""

    DEFAULT_CSS = """
    LineTable { height: 1fr; background: $surface; overflow-x: hidden; }
    LineTable > .line-table--cursor { background: $block-cursor-background; color: $block-cursor-foreground;
        text-style: $block-cursor-text-style; }
    LineTable:blur > .line-table--cursor { background: $block-cursor-blurred-background;
        color: $block-cursor-blurred-foreground; text-style: $block-cursor-blurred-text-style; }
    LineTable > .line-table--even { background: $surface-lighten-1; }
    """
    COMPONENT_CLASSES = {"line-table--cursor", "line-table--even"}
    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "cursor_to(0)", "First", show=False),
        Binding("end", "cursor_to(-1)", "Last", show=False),
    ]

    class Clicked(Message):
        """A row was clicked (the cursor is on it now)."""

        def __init__(self, row: int) -> None:
            super().__init__()
            self.row = row

    cursor_row: reactive[int] = reactive(0, repaint=False)
    """The row under the cursor."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._lines: list[str] = []
        self._strips: dict[tuple[str, int, int], Strip] = {}

    @property
    def row_count(self) -> int:
        return len(self._lines)

    def set_rows(self, lines: list[str]) -> None:
        """Show `lines`; repaint only those that changed (all of them if the count changed)."""
        old = self._lines
        self._lines = lines
        if len(old) != len(lines):
            self.virtual_size = Size(self.size.width, len(lines))
            self.cursor_row = min(self.cursor_row, max(0, len(lines) - 1))
            self.refresh()
            return
        top = int(self.scroll_offset.y)
        for y in range(top, min(len(lines), top + self.size.height)):
            if old[y] != lines[y]:
                self.refresh_line(y)

    def move_cursor(self, row: int) -> None:
        self.cursor_row = max(0, min(row, len(self._lines) - 1))

    def watch_cursor_row(self, old: int, new: int) -> None:
        self.refresh_line(old)
        self.refresh_line(new)
        top = int(self.scroll_offset.y)
        if new < top:
            self.scroll_to(y=new, animate=False)
        elif new >= top + self.size.height:
            self.scroll_to(y=new - self.size.height + 1, animate=False)

    def render_line(self, y: int) -> Strip:
        row = y + int(self.scroll_offset.y)
        width = self.size.width
        if row >= len(self._lines):
            return Strip.blank(width, self.rich_style)
        kind = 2 if row == self.cursor_row else row % 2
        text = self._lines[row]
        key = (text, kind, width)
        strip = self._strips.get(key)
        if strip is None:
            if len(self._strips) > 4000:
                self._strips.clear()
            style = self.rich_style
            if kind == 2:
                style += self.get_component_rich_style("line-table--cursor")
            elif kind == 0:
                style += self.get_component_rich_style("line-table--even")
            strip = Strip([Segment(text.translate(_CONTROLS), style)]).crop_extend(0, width, style)
            self._strips[key] = strip
        return strip

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self._lines))

    def action_cursor(self, step: int) -> None:
        self.move_cursor(self.cursor_row + step)

    def action_page(self, step: int) -> None:
        self.move_cursor(self.cursor_row + step * max(1, self.size.height - 1))

    def action_cursor_to(self, row: int) -> None:
        self.move_cursor(row if row >= 0 else len(self._lines) - 1)

    def on_click(self, event: events.Click) -> None:
        row = event.y + int(self.scroll_offset.y)
        if 0 <= row < len(self._lines):
            self.move_cursor(row)
            self.post_message(self.Clicked(row))
