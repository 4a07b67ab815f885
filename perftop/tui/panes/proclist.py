"""The process list: every process, sortable and filterable; Enter attaches to the selected one."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Input, Static

from perftop.collectors.model import ProcessRow
from perftop.render.units import fmt_bytes
from perftop.tui.widgets.filterbar import FilterBar
from perftop.tui.widgets.proctable import LineTable

SORTS: tuple[str, ...] = ("cpu", "mem", "pid", "name")
"""The sort orders `s` cycles through."""


def sort_rows(rows: list[ProcessRow], sort: str) -> list[ProcessRow]:
    """Rows in display order: CPU and memory descending, PID and name ascending."""
    if sort == "cpu":
        return sorted(rows, key=lambda r: (-r.cpu_percent, -r.rss_bytes, r.pid))
    if sort == "mem":
        return sorted(rows, key=lambda r: (-r.rss_bytes, r.pid))
    if sort == "pid":
        return sorted(rows, key=lambda r: r.pid)
    return sorted(rows, key=lambda r: (r.name.lower(), r.pid))


def filter_rows(rows: list[ProcessRow], text: str) -> list[ProcessRow]:
    """Rows whose name or command line contains `text` (case-insensitive), or whose PID is `text`."""
    needle = text.strip().lower()
    if not needle:
        return rows
    return [
        r for r in rows if needle in r.name.lower() or needle in r.cmdline.lower() or needle == str(r.pid)
    ]


def _line(pid: str, user: str, cpu: str, rss: str, thr: str, cmd: str) -> str:
    """One row of the table, in fixed-width columns."""
    return f" {pid:>7} {user:<9} {cpu:>5} {rss:>10} {thr:>4}  {cmd}"


class ProcessListPane(Vertical):
    """A table of processes. Posts `ProcessListPane.Attach` when the user picks one."""

    DEFAULT_CSS = """
    ProcessListPane { height: 1fr; border: round $primary; border-title-color: $primary; }
    ProcessListPane > LineTable { height: 1fr; }
    ProcessListPane > .header { height: 1; text-style: bold; color: $accent; }
    """

    BINDINGS = [
        Binding("slash,f3,f4", "filter", "Filter", key_display="/"),
        Binding("s,f6", "cycle_sort", "Sort", key_display="s"),
        Binding("enter", "attach", "Attach", show=True),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    class Attach(Message):
        """The user chose a process to attach to."""

        def __init__(self, pid: int) -> None:
            super().__init__()
            self.pid = pid

    rows: reactive[list[ProcessRow]] = reactive(list, always_update=True, repaint=False)
    """The latest process list, unsorted and unfiltered."""
    sort: reactive[str] = reactive("cpu")
    """The current sort order, one of SORTS."""
    filter_text: reactive[str] = reactive("")
    """The name/cmdline filter typed after `/`."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._shown: list[int] = []
        self._table = LineTable()
        self._input = FilterBar(
            "filter by name, command line or PID; Enter keeps it, Escape clears it", self._table
        )

    def compose(self) -> ComposeResult:
        yield self._input
        yield Static(_line("PID", "USER", "CPU%", "RSS", "THR", "COMMAND"), classes="header", markup=False)
        yield self._table

    def on_mount(self) -> None:
        self._title()

    def _title(self) -> None:
        filt = f" · filter {self.filter_text!r}" if self.filter_text else ""
        title = f"processes ({len(self._shown)}) · sort {self.sort}{filt}"
        if title != self.border_title:
            self.border_title = title

    def watch_rows(self) -> None:
        self._refresh_table()

    def watch_sort(self) -> None:
        self._refresh_table()

    def watch_filter_text(self) -> None:
        self._refresh_table()

    @property
    def shown_pids(self) -> list[int]:
        """PIDs in display order, after sort and filter."""
        return list(self._shown)

    def _refresh_table(self) -> None:
        if not self.is_mounted:
            return
        table = self._table
        selected = self.selected_pid
        rows = sort_rows(filter_rows(self.rows, self.filter_text), self.sort)
        table.set_rows(
            [
                _line(
                    str(r.pid),
                    r.username[:9],
                    f"{r.cpu_percent:5.1f}",
                    fmt_bytes(r.rss_bytes),
                    str(r.num_threads),
                    r.cmdline or r.name,
                )
                for r in rows
            ]
        )
        self._shown = [r.pid for r in rows]
        if selected in self._shown:
            table.move_cursor(self._shown.index(selected))
        self._title()

    @property
    def selected_pid(self) -> int | None:
        """The PID under the cursor, if any."""
        table = self._table
        if not self._shown or table.cursor_row < 0 or table.cursor_row >= len(self._shown):
            return None
        return self._shown[table.cursor_row]

    def select_pid(self, pid: int) -> bool:
        """Move the cursor to `pid`; False where it is not shown."""
        if pid not in self._shown:
            return False
        self._table.move_cursor(self._shown.index(pid))
        return True

    def action_filter(self) -> None:
        self._input.open()

    def action_cycle_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]

    def action_attach(self) -> None:
        pid = self.selected_pid
        if pid is not None:
            self.post_message(self.Attach(pid))

    @on(LineTable.Clicked)
    def _row_selected(self, event: LineTable.Clicked) -> None:
        event.stop()
        self.action_attach()

    @on(Input.Changed)
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value

    def action_clear_filter(self) -> None:
        """Escape clears the filter and returns to the table."""
        self._input.clear()
        self.filter_text = ""
