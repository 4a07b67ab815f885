"""The actions pane: results of the actions run inside the attached process (profile, memory, gc, threads).

The keys that start actions belong to the attached view (`AttachedView`), so they work from every tab of
it; the results land here, stay on screen after the action, and `s` saves them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.reactive import reactive
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import DataTable, Label, Static

from perftop.render.units import fmt_bytes, short_path
from perftop.tui.context import agent_host
from perftop.tui.messages import AgentReply
from perftop.tui.panes.live import DeferredPane

if TYPE_CHECKING:
    from textual.widgets import ProgressBar

    from perftop.tui.widgets.flame import FlameView

TITLES = {
    "profile": "CPU profile (sampling)",
    "profile_exact": "exact profile (cProfile)",
    "memory": "memory (tracemalloc)",
    "gc": "forced GC",
    "threads": "thread dump",
}
PROFILE_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
"""The profile durations `,` and `.` step through."""


class ActionsPane(DeferredPane):
    """Progress of the running action and the last result; `f` flips a profile between table and flame.
    Its children are mounted when its tab is first needed (DeferredPane): shown, or an action started
    from another tab; the flame graph widget loads with them."""

    DEFAULT_CSS = """
    ActionsPane { height: 1fr; border: round $primary; border-title-color: $primary; }
    ActionsPane > #action-status { height: 1; padding: 0 1; }
    ActionsPane > #action-status > Label { width: 1fr; }
    ActionsPane > #action-status > ProgressBar { width: 40; display: none; }
    ActionsPane.-running > #action-status > ProgressBar { display: block; }
    ActionsPane > #result-scroll { height: 1fr; padding: 0 1; }
    ActionsPane > FlameView { display: none; }
    ActionsPane > #memory-sites { display: none; height: 1fr; }
    ActionsPane.-memory > #memory-sites { display: block; }
    ActionsPane.-memory > #result-scroll { height: auto; max-height: 4; }
    ActionsPane.-memory.-workers > #result-scroll { max-height: 6; }
    ActionsPane.-flame > FlameView { display: block; }
    ActionsPane.-flame > #result-scroll { display: none; }
    """

    BINDINGS = [
        Binding("f", "toggle_flame", "Flame/table"),
        Binding("s", "save", "Save result"),
        Binding("comma", "seconds(-1)", "-Profile s", key_display=","),
        Binding("full_stop", "seconds(1)", "+Profile s", key_display="."),
    ]

    profile_seconds: reactive[float] = reactive(5.0)
    """How long `p` and `P` profile for."""
    running: reactive[str | None] = reactive(None)
    """The action under way, or None."""

    def __init__(self, *, id: str | None = None, profile_seconds: float = 5.0) -> None:
        super().__init__(id=id)
        self.set_reactive(ActionsPane.profile_seconds, profile_seconds)
        self.results: dict[str, Any] = {}
        """The last result of each action, by name."""
        self.tracing_text = ""
        """The header's note on memory tracing, while the app traces."""
        self._title_base = "actions"
        self._title_shown: str | None = None
        self.last: str | None = None
        """The action whose result is shown."""
        self._started = 0.0
        self._duration = 0.0
        self._status = Label("", id="action-status-text", markup=False)
        self._progress: ProgressBar | None = None
        """The running action's progress bar: mounted only while a timed action runs, as a ProgressBar
        keeps a timer of its own."""
        self._ticker: Timer | None = None
        self._text = Static("", id="result", markup=False)
        self._sites: DataTable[Text] = DataTable(cursor_type="row", id="memory-sites")
        self._site_rows: list[dict[str, Any]] = []
        self._flame: FlameView | None = None
        """The flame graph of the last profile: made with the other children (`make_children`)."""
        self._status_row = Horizontal(self._status, id="action-status")
        self.pid: int | None = None
        self._where = ""
        """Where the running action was sent, for the title: a worker, the parent alone, or ""."""
        self.where: dict[str, str] = {}
        """Where each shown result ran ("3 workers", "PID 501"...), by action."""

    def make_children(self) -> Iterable[Widget]:
        from perftop.tui.widgets.flame import FlameView

        self._flame = FlameView(id="flame")
        scroll = VerticalScroll(self._text, id="result-scroll")
        return (self._status_row, scroll, self._sites, self._flame)

    def on_show(self) -> None:
        """Shown: built, where nothing built it before."""
        self.build()

    def on_mount(self) -> None:
        # The elapsed time and progress are redrawn 10 times a second, only while an action runs.
        self._ticker = self.set_interval(0.1, self._tick, pause=self.running is None)
        self._show_status()
        self._text.update(
            "Keys on the attached process (from any tab):\n"
            "  p  CPU profile for the set seconds (all threads, sampled in the app's agent)\n"
            "  P  exact profile (cProfile; its overhead is stated with the result)\n"
            "  m  memory: first press starts tracemalloc, later presses diff against the previous snapshot\n"
            "  M  stop tracing and free tracemalloc's memory\n"
            "  g  forced GC with before/after     t  thread dump (and asyncio tasks)\n"
            "Here: , and . change the profile seconds, f flame view, s save the result."
        )
        self._title_base = "actions"
        self._set_title()

    def show_tracing(self, memory: dict[str, Any] | None, now: float) -> None:
        """tracemalloc's state in the app, in the header for as long as it is on: every allocation of the
        app is slower while it traces, so it is never on unseen."""
        self.tracing_text = ""
        if memory and memory.get("tracing"):
            stops = memory.get("stops_at")
            seconds = max(0, int(stops - now)) if stops else None
            left = "" if seconds is None else f", stops in {seconds // 60} min {seconds % 60:02d} s"
            self.tracing_text = (
                f" · memory tracing ON ({fmt_bytes(memory.get('overhead_bytes'))} overhead{left}; M stops it)"
            )
        self._set_title()

    def _set_title(self) -> None:
        """The border title, set only when it changed: setting it repaints the pane, and this pane is
        mostly on a hidden tab, where any repaint makes Textual lay the whole screen out again."""
        title = f"{self._title_base}{self.tracing_text}"
        if title != self._title_shown:
            self._title_shown = title
            self.border_title = title

    def reset(self, pid: int) -> None:
        self.pid = pid
        self.results.clear()
        self.last = None
        self.running = None

    def start(self, name: str, params: dict[str, Any]) -> bool:
        """Run an action in the attached agent; refused (with a notice) while another runs."""
        if self.running is not None:
            elapsed = time.monotonic() - self._started
            self.notify(
                f"{TITLES[self.running]} is running ({elapsed:.1f} s); wait for it", severity="warning"
            )
            return False
        app = agent_host(self.app)
        if app is None:
            return False
        seconds = float(params.get("seconds", 0.0))
        target = app.action_target
        where = "" if target is None or target.children else f"PID {target.pid}"
        if not app.agent_call("action", {"name": name, **params}, self, timeout=seconds + 60.0):
            return False
        self.build()  # the progress and, later, the result show here
        self.running = name
        self._where = where
        self._started = time.monotonic()
        self._duration = seconds
        if seconds > 0:
            from textual.widgets import ProgressBar

            self._progress = ProgressBar(total=max(seconds, 0.1), show_eta=False)
            self._status_row.mount(self._progress)
        self.set_class(seconds > 0, "-running")  # watch_running ran before the duration was known
        self._show_status()
        return True

    def watch_running(self, running: str | None) -> None:
        self.set_class(running is not None and self._duration > 0, "-running")
        if self._ticker is not None:
            if running is None:
                self._ticker.pause()
            else:
                self._ticker.resume()
        if running is None and self._progress is not None:
            self._progress.remove()
            self._progress = None

    def _tick(self) -> None:
        if self.running is not None:
            elapsed = time.monotonic() - self._started
            if self._duration and self._progress is not None:
                self._progress.update(progress=min(elapsed, self._duration))
            self._show_status()

    def _show_status(self) -> None:
        if self.running is not None:
            elapsed = time.monotonic() - self._started
            of = f" of {self._duration:g} s" if self._duration else ""
            text = f"{TITLES[self.running]}: running {elapsed:.1f} s{of}"
        elif self.last is not None:
            text = f"{TITLES[self.last]}: done · s saves it"
        else:
            text = "no action run yet"
        self._status.update(f"{text} · profile length {self.profile_seconds:g} s")

    @on(AgentReply)
    async def _reply(self, msg: AgentReply) -> None:
        if msg.method != "action":
            return
        msg.stop()
        await self.until_ready()  # the result is laid out in the children: mounted first
        name = str(msg.params.get("name"))
        self.running = None
        if msg.error is not None:
            self.notify(
                f"{TITLES.get(name, name)} failed: {msg.error}", severity="error", timeout=8, markup=False
            )
            self._show_status()
            return
        # The report renderers (and the SQL plan advice they pull in) load with the first result.
        from perftop.render.actions import per_worker

        self.results[name] = msg.result
        self.last = name
        workers = per_worker(name, msg.result)
        self.where[name] = f"{len(workers)} workers" if workers else self._where
        self.set_class(bool(workers), "-workers")
        memory = name == "memory" and isinstance(msg.result, dict)
        self._show_sites(msg.result if memory else None, workers if memory else {})
        self._show_text()
        if name == "profile" and isinstance(msg.result, dict) and self._flame is not None:
            self._flame.load(msg.result.get("tree"))
        self.set_class(False, "-flame")
        self._show_status()
        where = f" · {self.where[name]}" if self.where[name] else ""
        self._title_base = f"actions · {TITLES.get(name, name)}{where}"
        self._set_title()

    def _text_width(self) -> int:
        """The width the result's text is laid out for (side-by-side columns that fit in it)."""
        width = self.size.width or self.app.size.width  # not laid out yet: its tab was just shown
        return max(40, width - 4)

    def _show_text(self) -> None:
        """The shown result as text: from several workers, side by side (see render_workers)."""
        from perftop.render.actions import render_workers

        if self.last is None:
            return
        result = self.results[self.last]
        if self.last == "memory" and self.has_class("-memory"):
            self._text.update(self._memory_head(result))
        else:
            self._text.update(render_workers(self.last, result, self._text_width()))

    def _memory_head(self, result: Any) -> str:
        """Above the table of memory sites: the traced sizes (each worker's, side by side)."""
        from perftop.render.actions import memory_side_by_side, per_worker, render

        workers = per_worker("memory", result)
        if workers:
            return memory_side_by_side(workers, self._text_width(), limit=0)
        return render("memory", {**(result or {}), "diff": [], "top": []}).split("\n\n")[0]

    def on_resize(self) -> None:
        if self.has_class("-workers"):
            self._show_text()

    def _show_sites(self, result: dict[str, Any] | None, workers: dict[int, Any]) -> None:
        """Memory results: the allocation sites that grew, in a table; from several workers, each one's
        growth in a column of its own beside the total. Enter shows a site's traceback."""
        self._sites.clear(columns=True)
        # From workers, the site comes before the objects and size columns, to stay on an 80-column screen.
        last = [("objects", 9), ("size now", 11)]
        heads = [("growth", 12), *((str(pid), 11) for pid in workers)]
        heads += [("allocated at", 50), *last] if workers else [*last, ("allocated at", 70)]
        for header, width in heads:
            self._sites.add_column(header, width=width)
        rows = [] if result is None or not result.get("tracing") else list(result.get("diff") or [])
        self._site_rows = rows[:200]
        from perftop.render.actions import memory_growth_by_worker

        growth = memory_growth_by_worker(workers)
        for d in self._site_rows:
            by_pid = growth.get((str(d.get("file")), d.get("line")), {})
            tail = [Text(f"{d.get('count_diff', 0):+,}"), Text(f"{d.get('size_bytes', 0):,}")]
            site = Text(f"{short_path(d.get('file'))}:{d.get('line')}")
            self._sites.add_row(
                Text(f"{d.get('size_diff_bytes', 0):+,}"),
                *(Text(f"{by_pid[pid]:+,}" if pid in by_pid else "-") for pid in workers),
                *([site, *tail] if workers else [*tail, site]),
            )
        self.set_class(bool(self._site_rows), "-memory")

    @on(DataTable.RowSelected, "#memory-sites")
    def _site_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        row = self._site_rows[event.cursor_row] if 0 <= event.cursor_row < len(self._site_rows) else None
        if row is not None:
            from perftop.tui.screens.traceback import TracebackView

            self.app.push_screen(TracebackView(row))

    def action_toggle_flame(self) -> None:
        if self.last != "profile":
            self.notify("the flame view needs a CPU profile: press p")
            return
        self.toggle_class("-flame")
        if self.has_class("-flame") and self._flame is not None:
            self._flame.focus()

    def action_seconds(self, step: int) -> None:
        i = min(range(len(PROFILE_SECONDS)), key=lambda k: abs(PROFILE_SECONDS[k] - self.profile_seconds))
        self.profile_seconds = PROFILE_SECONDS[max(0, min(len(PROFILE_SECONDS) - 1, i + step))]
        self._show_status()

    def action_save(self) -> None:
        """Write the shown result as JSON (and a profile's folded stacks and speedscope file) here."""
        if self.last is None:
            self.notify("nothing to save yet")
            return
        paths = save_result(self.last, self.results[self.last], self.pid or 0, Path.cwd())
        self.notify("saved " + ", ".join(str(p) for p in paths), timeout=10, markup=False)


def save_result(name: str, result: Any, pid: int, folder: Path) -> list[Path]:
    """Files for one result: a `.json`, plus `.folded` and `.speedscope.json` for profiles."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = folder / f"perftop-{name}-{pid}-{stamp}"
    paths = [base.with_suffix(".json")]
    paths[0].write_text(json.dumps(result, indent=2), encoding="utf-8")
    if name == "profile" and isinstance(result, dict):
        folded = base.with_suffix(".folded")
        folded.write_text(str(result.get("folded", "")), encoding="utf-8")
        speedscope = Path(os.fspath(base) + ".speedscope.json")
        speedscope.write_text(json.dumps(result.get("speedscope")), encoding="utf-8")
        paths += [folded, speedscope]
    return paths
