"""The timings pane: live percentiles per metric from the attached process's agent(s)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import DataTable, Static

from perftop.render.units import fmt_count, fmt_ms
from perftop.tui.panes import CELL_PAD, FRAME
from perftop.tui.panes.live import CatchUp, DeferredPane, sync_rows

if TYPE_CHECKING:
    from perftop.collectors.agent_view import AgentView
    from perftop.collectors.rows import TimingRow, ViewRows

WINDOWS: tuple[tuple[float | None, str], ...] = (
    (None, "since start"),
    (10.0, "10 s"),
    (60.0, "1 min"),
    (300.0, "5 min"),
)
"""The windows `w` cycles through: (seconds or None, label)."""

COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("metric", "name", 24),
    ("rate/s", "rate_per_s", 7),
    ("count", "count", 7),
    ("errors", "errors", 6),
    ("err%", "error_percent", 5),
    ("mean", "mean_ms", 7),
    ("p50", "p50_ms", 7),
    ("p90", "p90_ms", 7),
    ("p95", "p95_ms", 7),
    ("p99", "p99_ms", 7),
    ("p99.9", "p999_ms", 7),
    ("max", "max_ms", 7),
    ("p99 trend", "trend", 12),
)
"""(header, row key, width) of each column; any column but the trend can be the sort key."""
SORTABLE = tuple(key for _, key, _ in COLUMNS if key != "trend")
PRIORITY = (
    "name", "p99_ms", "p50_ms", "max_ms", "rate_per_s", "error_percent", "p999_ms", "count", "errors",
    "p95_ms", "mean_ms", "p90_ms", "trend",
)  # fmt: skip
"""Which columns a narrow pane keeps first (p99 stays on an 80-column screen); shown in COLUMNS' order."""
NAME_MIN, NAME_MAX = 20, 48
"""The metric column's width: at least NAME_MIN, then what is left over, up to the longest name."""


def layout_columns(width: int, longest_name: int) -> list[tuple[str, str, int]]:
    """The columns that fit in a pane `width` cells wide, with the metric column widened into the rest."""
    room = width - FRAME
    widths = {key: w for _, key, w in COLUMNS}
    widths["name"] = NAME_MIN
    chosen: set[str] = set()
    used = 0
    for key in PRIORITY:
        need = widths[key] + CELL_PAD
        if used + need <= room or not chosen:
            chosen.add(key)
            used += need
    widths["name"] += max(0, min(room - used, max(longest_name, NAME_MIN) - NAME_MIN, NAME_MAX - NAME_MIN))
    return [(header, key, widths[key]) for header, key, _ in COLUMNS if key in chosen]


TREND = 30
_LEVELS = "▁▂▃▄▅▆▇█"

NO_AGENT = (
    "This process has no perftop agent, so only the OS can be asked about it (see the Process tab).\n\n"
    "To see timings, instrument the app:\n"
    "  import perftop\n"
    "  perftop.start()\n"
    "  @perftop.time_it('checkout')          # or: with perftop.timer('render'): ...\n\n"
    "or run it unchanged under perftop:  perftop run -- python app.py\n\n"
    "or, for a Python process already running, press i to inject an agent into it (perftop inject PID)"
)


def trend_glyphs(values: list[float]) -> str:
    """A tiny text sparkline, scaled from 0 to the largest value shown."""
    if not values:
        return ""
    top = max(values) or 1.0
    return "".join(_LEVELS[min(7, int(v / top * 7.999))] for v in values[-12:])


def sort_key(row: TimingRow, key: str) -> Any:
    """Numbers sort high first; names alphabetically."""
    if key == "name":
        return row.name
    value = row[key]
    return -(value if isinstance(value, (int, float)) else -1.0)


class TimingsPane(DeferredPane, can_focus=True):
    """Per-metric latency table, counters and gauges. Enter opens a metric's distribution. Its children
    are mounted when its tab is first needed (DeferredPane)."""

    DEFAULT_CSS = """
    TimingsPane { height: 1fr; border: round $primary; border-title-color: $primary; }
    TimingsPane > #timings-help { display: none; padding: 1 2; color: $text-muted; }
    TimingsPane.-no-agent > #timings-help { display: block; }
    TimingsPane.-no-agent > DataTable { display: none; }
    TimingsPane > #timings-gone { display: none; background: $error; color: $text; }
    TimingsPane.-gone > #timings-gone { display: block; }
    TimingsPane > DataTable { height: 1fr; }
    TimingsPane > #counters { height: auto; max-height: 6; padding: 0 1; color: $text-muted; }
    """

    BINDINGS = [
        Binding("o,f6", "cycle_sort", "Sort col", key_display="o"),
        Binding("enter", "detail", "Detail"),
        Binding("b", "breakdown", "Per worker"),
    ]

    class WindowChanged(Message):
        """The user picked another window; the sampler should ask the agent for it."""

        def __init__(self, window: float | None, label: str) -> None:
            super().__init__()
            self.window = window
            self.label = label

    window_index: reactive[int] = reactive(0)
    """Index into WINDOWS."""
    sort: reactive[str] = reactive("p99_ms")
    """Row key the table is sorted by."""
    breakdown: reactive[bool] = reactive(False)
    """Show one row per worker process as well as the merged row."""
    gone: reactive[str | None] = reactive(None)
    """Why the process stopped answering, or None."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.view: AgentView | None = None
        self.data: ViewRows | None = None
        """The rows of `view`, as the sampler built them."""
        self._trends: dict[str, deque[float]] = {}
        self._p50: dict[str, deque[float]] = {}
        self._shown: list[str] = []
        self.pid: int | None = None
        self._gone = Static("", id="timings-gone", markup=False)
        self._help = Static(NO_AGENT, id="timings-help", markup=False)
        self._table: DataTable[Text] = DataTable(cursor_type="row", zebra_stripes=True)
        self._counters = Static("", id="counters", markup=False)

        self._columns: list[tuple[str, str, int]] = []
        self._catch_up = CatchUp(self, self._redraw)

    def on_resize(self) -> None:
        if self._lay_out():
            self._refresh_table()

    def _lay_out(self, rows: list[TimingRow] | None = None) -> bool:
        """Fit the columns to the pane's width and the longest name of `rows` (default: the rows shown);
        True where they changed."""
        longest = max((len(row.label) for row in (self.rows() if rows is None else rows)), default=0)
        columns = layout_columns(self.size.width or 80, longest)
        if columns == self._columns:
            return False
        self._columns = columns
        self._table.clear(columns=True)
        for header, key, width in columns:
            self._table.add_column(header, key=key, width=width)
        return True

    def make_children(self) -> Iterable[Widget]:
        return (self._gone, self._help, self._table, self._counters)

    def on_mount(self) -> None:
        self._title()

    def reset(self, pid: int) -> None:
        """A new process was attached: forget the previous one's data."""
        self.pid = pid
        self.view = None
        self.data = None
        self.gone = None
        self._trends.clear()
        self._p50.clear()
        self.set_class(False, "-no-agent")
        if self.built:
            self._table.clear()
            self._counters.update("")
            self._title()

    def watch_gone(self, reason: str | None) -> None:
        self.set_class(reason is not None, "-gone")
        if reason is not None:
            self._gone.update(f"process gone: {reason}. Last values kept.")

    def show(self, data: ViewRows | None, error: str | None = None) -> None:
        """New agent data, as rows (None: the process has no agent)."""
        if data is None:
            if self.view is None:
                self.pass_focus(self._table, self)  # the table is about to hide
                self.set_class(True, "-no-agent")
                if error:
                    self._help.update(f"agent error: {error}\n\n{NO_AGENT}")
            return
        if self.has_class("-no-agent"):
            self.set_class(False, "-no-agent")
            self.pass_focus(self, self._table)
        self.view, self.data = data.view, data
        for row in data.timings:
            if row.p99_ms is not None:
                self._trends.setdefault(row.name, deque(maxlen=TREND)).append(row.p99_ms)
                self._p50.setdefault(row.name, deque(maxlen=TREND)).append(row.p50_ms or 0.0)
        self._catch_up.changed()

    async def on_show(self) -> None:
        """A hidden tab is not redrawn every tick: catch up when it is shown, its children built and
        mounted first (the first time)."""
        await self.until_ready()
        self._catch_up.shown()

    def _redraw(self) -> None:
        data = self.data
        if data is None:
            return
        self._refresh_table()
        parts = [f"{c.name} {fmt_count(c.value)} ({c.rate_per_s:.1f}/s)" for c in data.counters]
        parts += [f"{name} = {value:g}" for name, value in data.gauges]
        self._counters.update("   ".join(parts) if parts else "")
        self._title()

    def rows(self) -> list[TimingRow]:
        """Table rows in display order (merged rows, and per-worker rows under each with `b`)."""
        if self.data is None:
            return []
        rows = sorted(self.data.timings, key=lambda r: sort_key(r, self.sort))
        if not (self.breakdown and self.data.workers):
            return rows
        out = []
        for row in rows:
            out.append(row)
            out.extend(self.data.workers.get(row.name, ()))
        return out

    def _refresh_table(self) -> None:
        rows = self.rows()
        self._lay_out(rows)
        columns = self._columns
        sync_rows(
            self._table,
            [(row.key, [self._cell(row, key, width) for _, key, width in columns]) for row in rows],
        )
        self._shown = [row.name for row in rows]

    def _cell(self, row: TimingRow, key: str, width: int) -> str:
        if key == "name":
            name = row.label
            return name if len(name) <= width else name[: width - 1] + "…"
        if key == "rate_per_s":
            return f"{row.rate_per_s:.1f}"
        if key in ("count", "errors"):
            return fmt_count(row[key])
        if key == "error_percent":
            return f"{row.error_percent:.1f}"
        if key == "trend":
            return trend_glyphs(list(self._trends.get(row.name, ())))
        return fmt_ms(row[key])

    def _title(self) -> None:
        label = WINDOWS[self.window_index][1]
        who = "" if self.view is None else f" · {self.view.describe()}"
        title = f"timings · window {label} · sort {self.sort.removesuffix('_ms')}{who}"
        if title != self.border_title:  # setting it, even unchanged, lays the whole screen out again
            self.border_title = title

    def watch_window_index(self, index: int) -> None:
        self._trends.clear()
        self._p50.clear()
        self.post_message(self.WindowChanged(WINDOWS[index][0], WINDOWS[index][1]))
        if self.is_mounted:
            self._title()

    def watch_sort(self) -> None:
        if self.built:
            self._refresh_table()
        if self.is_mounted:
            self._title()

    def watch_breakdown(self) -> None:
        if self.built:
            self._refresh_table()

    def action_cycle_window(self) -> None:
        """The next window, for the timings and queries panes both (`w` on the attached view)."""
        self.window_index = (self.window_index + 1) % len(WINDOWS)

    def action_cycle_sort(self) -> None:
        self.sort = SORTABLE[(SORTABLE.index(self.sort) + 1) % len(SORTABLE)]

    def action_breakdown(self) -> None:
        if self.data is not None and not self.data.workers:
            self.notify("only one process reports to this view: nothing to break down")
        self.breakdown = not self.breakdown

    @property
    def selected_metric(self) -> str | None:
        cursor = self._table.cursor_row
        return self._shown[cursor] if 0 <= cursor < len(self._shown) else None

    def action_detail(self) -> None:
        name = self.selected_metric
        if name is None or self.view is None or self.data is None or name not in self.view.sketches:
            return
        row = next((r for r in self.data.timings if r.name == name), None)
        if row is None:
            return
        from perftop.tui.screens.metric_detail import MetricDetail  # with the first detail shown

        self.app.push_screen(
            MetricDetail(
                name,
                self.view.sketches[name],
                row,
                list(self._p50.get(name, ())),
                list(self._trends.get(name, ())),
                self.view.errors_by_type.get(name, {}),
                self.data.request_of(name),
            )
        )

    @on(DataTable.RowSelected)
    def _selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_detail()
