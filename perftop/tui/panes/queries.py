"""The slow-query pane: SQL fingerprints by cost, the slowest recent executions, the pool, EXPLAIN."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.markup import escape
from textual.reactive import reactive
from textual.widget import Widget
from textual.widgets import DataTable, Input, Label, Static

from perftop.render.units import fmt_count, fmt_ms, short_path
from perftop.tui.context import agent_host
from perftop.tui.messages import AgentReply
from perftop.tui.panes import CELL_PAD, FRAME
from perftop.tui.panes.live import CatchUp, DeferredPane, sync_rows
from perftop.tui.widgets.filterbar import FilterBar

if TYPE_CHECKING:
    from perftop.collectors.rows import CallSite, QueryRow, QueryStats

COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("fingerprint", "fingerprint", 44),
    ("count", "count", 6),
    ("total", "total_ms", 8),
    ("share", "share_percent", 6),
    ("mean", "mean_ms", 7),
    ("p95", "p95_ms", 7),
    ("max", "max_ms", 7),
    ("rows", "rows", 6),
    ("N+1", "n_plus_one", 4),
)
SORTABLE = tuple(k for _, k, _ in COLUMNS if k not in ("fingerprint", "n_plus_one"))

NOT_INSTRUMENTED = (
    "No SQL is recorded in this process.\n\n"
    "Instrument SQLAlchemy in the app:  perftop.instrument_sqlalchemy(engine)  (or engine=None for all),\n"
    "or run it under perftop, which does it for every engine:  perftop run -- python app.py"
)


TIME_MEANING = "app time: execute until rows fetched or closed, round trip included; not server time"
"""What every time in this pane is (the agent's SQL hook measures it in the app, see its docstring)."""

FINGERPRINT_MIN = 30
SLOW_FIXED = (("ms", 8), ("ago", 6))
"""The slow list's fixed columns; its fingerprint and call site share what is left."""


def site_text(site: CallSite | None, short: bool = False) -> str:
    """`file:line in function` of a call site; `short` shortens the path as py-spy does."""
    if site is None:
        return "-"
    file = short_path(site.file, keep=2, longer_than=0) if short else site.file
    return f"{file}:{site.line} in {site.function}"


def fingerprint_width(width: int) -> int:
    """The fingerprint column's width in a pane `width` cells wide: what the other columns leave."""
    others = sum(w + CELL_PAD for _, key, w in COLUMNS if key != "fingerprint")
    return max(FINGERPRINT_MIN, width - FRAME - others - CELL_PAD)


def rows_text(q: QueryRow) -> str:
    """Rows returned or affected; '-' where the driver never said (SQLite's SELECT rowcount is -1)."""
    return fmt_count(q.rows)


class QueriesPane(DeferredPane, can_focus=True):
    """Fingerprints by total time; `e` explains the selected one in the app, `E` with ANALYZE. Its children
    are mounted when its tab is first needed (DeferredPane); the SQL rendering loads with them."""

    DEFAULT_CSS = """
    QueriesPane { height: 1fr; border: round $primary; border-title-color: $primary; }
    QueriesPane > #queries-help { display: none; padding: 1 2; color: $text-muted; }
    QueriesPane.-empty > #queries-help { display: block; }
    QueriesPane.-empty > DataTable { display: none; }
    QueriesPane > #query-table { height: 2fr; }
    QueriesPane > .section { color: $secondary; text-style: bold; padding: 0 1; }
    QueriesPane > #slow-table { height: 1fr; }
    QueriesPane > #pool { height: 1; padding: 0 1; color: $text-muted; }
    QueriesPane > #selected { height: auto; max-height: 3; padding: 0 1; }
    QueriesPane.-short > #slow-table, QueriesPane.-short > #slow-title { display: none; }
    QueriesPane.-short > #selected { max-height: 1; }
    """
    SHORT = 20
    """Below this height the slow list gives its room to the fingerprints (at 80x24: 8 rows instead of 2)."""

    BINDINGS = [
        Binding("e", "explain(False)", "Explain"),
        Binding("E", "explain(True)", "Explain analyze"),
        Binding("o,f6", "cycle_sort", "Sort col", key_display="o"),
        Binding("slash,f3,f4", "filter", "Filter", key_display="/"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    sort: reactive[str] = reactive("total_ms")
    """Row key the fingerprints are sorted by (descending)."""
    window_label: reactive[str] = reactive("since start")
    """The window the agent's figures cover (the timings pane's, changed by `w` on any tab)."""
    filter_text: reactive[str] = reactive("")
    """Substring the fingerprints must contain."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.stats: QueryStats | None = None
        self._shown: list[str] = []
        self.explaining: str | None = None
        """The fingerprint an EXPLAIN is running for, or None."""
        self.last_explain: dict[str, Any] | None = None
        self._help = Static(NOT_INSTRUMENTED, id="queries-help", markup=False)
        self._table: DataTable[Text] = DataTable(cursor_type="row", zebra_stripes=True, id="query-table")
        self._table.tooltip = (
            f"times ({', '.join(h for h, k, _ in COLUMNS if k.endswith('_ms'))}): {TIME_MEANING}"
        )
        self._input = FilterBar("filter fingerprints; Enter keeps it, Escape clears it", self._table)
        self._selected = Static("", id="selected")
        self._slow: DataTable[Text] = DataTable(cursor_type="row", id="slow-table")
        self._pool = Label("", id="pool")
        self._now = 0.0
        self._catch_up = CatchUp(self, self._redraw)
        self._fp_width = 0
        self._slow_fp_width = 0

    def make_children(self) -> Iterable[Widget]:
        self._lay_out(80)
        slow_title = Label(f"slowest recent executions · {TIME_MEANING}", classes="section", id="slow-title")
        return (self._help, self._input, self._table, self._selected, slow_title, self._slow, self._pool)

    def on_mount(self) -> None:
        self.set_class(True, "-empty")
        self._title()

    def on_resize(self) -> None:
        self.set_class(self.size.height < self.SHORT, "-short")
        if self._lay_out(self.size.width) and self.stats is not None:
            self._redraw()

    def _lay_out(self, width: int) -> bool:
        """Give the fingerprint columns the width the pane has; True where it changed."""
        fp_width = fingerprint_width(width)
        if fp_width == self._fp_width:
            return False
        self._fp_width = fp_width
        self._table.clear(columns=True)
        for header, key, w in COLUMNS:
            self._table.add_column(header, key=key, width=fp_width if key == "fingerprint" else w)
        rest = max(40, width - FRAME - sum(w + CELL_PAD for _, w in SLOW_FIXED) - 2 * CELL_PAD)
        self._slow_fp_width = rest * 11 // 20
        self._slow.clear(columns=True)
        for header, w in (
            *SLOW_FIXED,
            ("fingerprint", self._slow_fp_width),
            ("call site", rest - rest * 11 // 20),
        ):
            self._slow.add_column(header, width=w)
        return True

    def reset(self) -> None:
        self.stats = None
        self._shown = []
        self.explaining = None
        if self.built:
            self._table.clear()
            self._slow.clear()
        if self.is_mounted:
            self.set_class(True, "-empty")

    def show(self, stats: QueryStats | None, now: float | None = None) -> None:
        """New query stats from the agent (None: this process records no SQL)."""
        if stats is None or stats.empty:
            if self.stats is None:
                self.pass_focus(self._table, self)  # the table is about to hide
                self.set_class(True, "-empty")
            return
        if self.has_class("-empty"):
            self.set_class(False, "-empty")
            self.pass_focus(self, self._table)
        self.stats = stats
        self._now = time.time() if now is None else now
        self._catch_up.changed()

    async def on_show(self) -> None:
        """A hidden tab is not redrawn every tick: catch up when it is shown, its children built and
        mounted first (the first time)."""
        await self.until_ready()
        self._catch_up.shown()

    def _redraw(self) -> None:
        from perftop.render.sql import compact_sql

        stats, now = self.stats, self._now
        if stats is None:
            return
        self._refresh_table()
        slow_rows: list[tuple[str, list[str]]] = []
        for slow in stats.slow[:50]:
            key = f"{slow.at}|{slow.duration_ms}|{slow.fingerprint}"
            cells = [
                f"{slow.duration_ms:.1f}",
                f"{slow.age_s(now):.0f}s",
                compact_sql(slow.fingerprint, self._slow_fp_width),
                ("ERROR " + slow.error + " " if slow.error else "") + site_text(slow.call_site, short=True),
            ]
            slow_rows.append((key, cells))
        sync_rows(self._slow, slow_rows)
        pool = stats.pool
        if pool is not None:
            self._pool.update(
                f"pool: size {pool.size} · checked out {pool.checked_out} · overflow "
                f"{pool.overflow} · {pool.checkouts_per_s:.1f} checkouts/s · wait p99 "
                f"{fmt_ms(pool.wait_p99_ms)} max {fmt_ms(pool.wait_max_ms)}"
            )
        else:
            self._pool.update("pool: none seen")
        self._title()

    def rows(self) -> list[QueryRow]:
        """Fingerprint rows in display order, filtered."""
        if self.stats is None:
            return []
        needle = self.filter_text.lower().strip()
        rows = [q for q in self.stats.queries if needle in q.fingerprint.lower()]
        rows.sort(key=lambda q: -(q[self.sort] or 0))
        return rows

    def _refresh_table(self) -> None:
        from perftop.render.sql import compact_sql

        rows = self.rows()
        width = self._fp_width
        sync_rows(
            self._table,
            [
                (
                    q.fingerprint,
                    [
                        compact_sql(q.fingerprint, width),
                        fmt_count(q.count),
                        fmt_ms(q.total_ms),
                        f"{q.share_percent:.0f}%",
                        fmt_ms(q.mean_ms),
                        fmt_ms(q.p95_ms),
                        fmt_ms(q.max_ms),
                        rows_text(q),
                        "N+1" if q.n_plus_one else "",
                    ],
                )
                for q in rows
            ],
        )
        self._shown = [q.fingerprint for q in rows]
        self._describe_selected()

    def _title(self) -> None:
        n = len(self.stats.queries) if self.stats else 0
        threshold = self.stats.slow_ms if self.stats else None
        slow = f" · slow ≥ {threshold:g}ms" if threshold is not None else ""
        if self.stats and self.stats.server_times:
            slow += " · no database times (see JSON: server_times)"
        title = (
            f"queries ({n} fingerprints) · window {self.window_label} · sort "
            f"{self.sort.removesuffix('_ms')}{slow}"
        )
        if title != self.border_title:  # setting it, even unchanged, lays the whole screen out again
            self.border_title = title

    def watch_window_label(self) -> None:
        if self.is_mounted:
            self._title()

    @property
    def selected_fingerprint(self) -> str | None:
        cursor = self._table.cursor_row
        return self._shown[cursor] if 0 <= cursor < len(self._shown) else None

    def _selected_row(self) -> QueryRow | None:
        fp = self.selected_fingerprint
        return next((q for q in self.rows() if q.fingerprint == fp), None)

    @on(DataTable.RowHighlighted, "#query-table")
    def _highlighted(self) -> None:
        self._describe_selected()

    def _describe_selected(self) -> None:
        q = self._selected_row()
        if q is None:
            self._selected.update("")
            return
        routes = q.routes
        shown = ", ".join(routes[:3]) + (" ..." if len(routes) > 3 else "")
        in_routes = f" · {'routes' if len(routes) > 1 else 'route'} {shown}" if routes else ""
        n1 = (  # first: the long fingerprint below it may not fit in the lines shown
            f"N+1: run {q.count}x, from {site_text(q.n_plus_one_site)}{in_routes}\n" if q.n_plus_one else ""
        )
        errors = f" · {q.errors} errors" if q.errors else ""
        server = q.server_mean_ms
        times = (
            f" · app mean {fmt_ms(q.mean_ms)}, database {fmt_ms(server)} (pg_stat_statements; "
            "the rest is the round trip, the driver and the ORM)"
            if server is not None
            else ""
        )
        text = f"{q.fingerprint}{errors}{times}"
        self._selected.update(f"{escape(n1)}[b]{escape(q.dialect)}[/b] {escape(text)}")

    def watch_sort(self) -> None:
        if self.built and self.stats is not None:
            self._refresh_table()
            self._title()

    def watch_filter_text(self) -> None:
        if self.built and self.stats is not None:
            self._refresh_table()

    def action_cycle_sort(self) -> None:
        self.sort = SORTABLE[(SORTABLE.index(self.sort) + 1) % len(SORTABLE)]

    def action_filter(self) -> None:
        self._input.open()

    def action_clear_filter(self) -> None:
        self._input.clear()
        self.filter_text = ""

    @on(Input.Changed)
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value

    def action_explain(self, analyze: bool) -> None:
        """EXPLAIN the selected fingerprint in the app, on its own engine; ANALYZE asks first."""
        fp = self.selected_fingerprint
        if fp is None:
            self.notify("no fingerprint selected", severity="warning")
            return
        if self.explaining is not None:
            self.notify(
                f"EXPLAIN is already running for: {self.explaining[:60]}", severity="warning", markup=False
            )
            return
        if not analyze:
            self._explain(fp, False)
            return
        host = agent_host(self.app)
        if host is not None and host.refuses("EXPLAIN ANALYZE"):
            return
        from perftop.tui.screens.confirm import Confirm

        def answered(yes: bool | None) -> None:
            if yes:
                self._explain(fp, True)

        self.app.push_screen(
            Confirm(
                "EXPLAIN ANALYZE executes the statement (a SELECT only, inside a transaction that is rolled "
                f"back).\n\n{fp[:300]}\n\nRun it?"
            ),
            answered,
        )

    def _explain(self, fp: str, analyze: bool) -> None:
        app = agent_host(self.app)
        if app is None:
            return
        params = {"fingerprint": fp, "analyze": analyze, "confirm": analyze}
        if app.agent_call("explain", params, self, timeout=60.0):
            self.explaining = fp
            self.notify("EXPLAIN running in the app…")

    @on(AgentReply)
    def _reply(self, msg: AgentReply) -> None:
        if msg.method != "explain":
            return
        msg.stop()
        self.explaining = None
        if msg.error is not None:
            self.notify(f"EXPLAIN failed: {msg.error}", severity="error", timeout=8, markup=False)
            return
        self.last_explain = msg.result
        from perftop.tui.screens.explain import ExplainView  # the plan rendering loads with the first plan

        self.app.push_screen(ExplainView(msg.result))
