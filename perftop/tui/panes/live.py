"""What the panes fed every tick share: children built only when the tab is first needed, redrawing a
hidden tab only when it is shown, and tables updated in place (keyed rows; only changed cells rewritten,
rows that left removed, new ones added, re-sorted only when the order changed), which keeps the cursor on
the same row and spares DataTable re-measuring every cell after a `clear()`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from rich.text import Text
from textual.containers import Vertical
from textual.widget import AwaitMount, Widget

if TYPE_CHECKING:
    from textual.widgets import DataTable


class DeferredPane(Vertical):
    """A pane on a tab that is not shown at first (timings, queries, actions): the pane is composed with
    the attached view, so its state, classes and title are there from the start and data reaches it while
    hidden, but its children are mounted only when first needed (its tab shown, a key that acts on it).
    Every widget composed is styled before the first frame, which a hidden tab does not need."""

    _mounting: AwaitMount | None = None
    _ready = False

    def make_children(self) -> Iterable[Widget]:
        """The pane's children, as `compose` would yield them (called once, by `build`)."""
        return ()

    @property
    def built(self) -> bool:
        """Whether the children are in the DOM (mounted, or being mounted)."""
        return self._mounting is not None

    @property
    def ready(self) -> bool:
        """Whether the children have mounted. Until then what they show is not redrawn (CatchUp): a widget
        updated before it has mounted may keep the size of what it showed before."""
        return self._ready

    def build(self) -> None:
        """Put the children in the DOM, once: queries find them and focus can go to them as soon as this
        returns (a tab's number key focuses its table at once). Callers: the tab being shown, keys that act
        on the pane; `until_ready` where they must have mounted."""
        if self._mounting is None:
            self._mounting = self.mount_all(self.make_children())

    def pass_focus(self, holder: Widget, to: Widget) -> None:
        """Move the focus from `holder` to `to` if `holder` has it. The pane holds the focus, and so its keys,
        while its table is hidden (no data yet: a tab's number pressed before the first data came) and
        gives it back when the table shows, so that the arrows move its cursor at once. Done now, from
        `Screen.focused`: `has_focus` is set a message later and `focus()` waits its turn, and a table
        hidden with the focus leaves none at all."""
        if self.built and self.screen.focused is holder:
            self.screen.set_focus(to)

    async def until_ready(self) -> None:
        """Build the children if need be and wait until they have mounted."""
        self.build()
        if not self._ready and self._mounting is not None:
            await self._mounting
            self._ready = True


class CatchUp:
    """Redraws a pane at once when new data arrives while it is on screen; while it is hidden (another
    tab) or its children are not ready (DeferredPane), only once, when it is shown (the pane calls `shown()`
    from `on_show`, once its children are ready)."""

    def __init__(self, pane: Widget, redraw: Callable[[], None]) -> None:
        self._pane = pane
        self._redraw = redraw
        self._stale = False

    def changed(self) -> None:
        """New data: redraw now if the pane is on screen (and its children ready), else when it is shown."""
        self._stale = True
        pane = self._pane
        if pane.is_on_screen and (pane.ready if isinstance(pane, DeferredPane) else True):
            self.redraw()

    def shown(self) -> None:
        """The pane was shown: catch up with the data that came while it was hidden."""
        if self._stale:
            self.redraw()

    def redraw(self) -> None:
        self._stale = False
        self._redraw()


def sync_rows(table: DataTable[Text], rows: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Make `table` show `rows` ((row key, cell texts) in display order; one text per column): cells
    that changed are updated in place, rows no longer there removed, new ones added, and the rows
    re-sorted only where their order changed. The cursor stays on the row (key) it was on, or goes to the
    top where that row left. A key given twice is made unique (both rows are shown)."""
    columns = [column.key for column in table.ordered_columns]
    cursor = table.cursor_row
    ordered = table.ordered_rows
    selected = ordered[cursor].key if 0 <= cursor < len(ordered) else None
    rows = unique_keys(rows)
    wanted = {key for key, _ in rows}
    for row in ordered:
        if row.key.value not in wanted:
            table.remove_row(row.key)
    for key, texts in rows:
        if key in table.rows:
            for column, text in zip(columns, texts, strict=True):
                if str(table.get_cell(key, column)) != text:
                    table.update_cell(key, column, Text(text))
        else:
            table.add_row(*(Text(text) for text in texts), key=key)
    order = [key for key, _ in rows]
    if columns and [row.key.value for row in table.ordered_rows] != order:
        rank = {id(table.get_cell(key, columns[0])): i for i, key in enumerate(order)}
        table.sort(columns[0], key=lambda cell: rank[id(cell)])
    index = table.get_row_index(selected) if selected is not None and selected in table.rows else 0
    if index != table.cursor_row:
        table.move_cursor(row=index, animate=False)


def unique_keys(rows: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[str, Sequence[str]]]:
    """`rows` with a key already used suffixed with its occurrence (`key`, `key#2`, ...)."""
    used: set[str] = set()
    out: list[tuple[str, Sequence[str]]] = []
    for key, texts in rows:
        unique, n = key, 1
        while unique in used:
            n += 1
            unique = f"{key}#{n}"
        used.add(unique)
        out.append((unique, texts))
    return out
