"""The attached view: tabs for one process, and the keys that run actions inside it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import TabbedContent, TabPane, Tabs

from perftop.tui.context import agent_host
from perftop.tui.panes.actions import ActionsPane
from perftop.tui.panes.live import DeferredPane
from perftop.tui.panes.process import ProcessPane
from perftop.tui.panes.queries import QueriesPane
from perftop.tui.panes.timings import WINDOWS, TimingsPane

if TYPE_CHECKING:
    from perftop.tui.widgets.target import ActionTarget


class AttachedView(Vertical):
    """The tabs of one process. Owns the action keys, so that they work from every tab; results show in
    the Actions tab. Only the Process tab is built with the view: the others' panes are composed empty
    and build their content when first needed (`show_tab`, DeferredPane)."""

    BINDINGS = [
        Binding("p", "run('profile')", "Profile"),
        Binding("P", "run('profile_exact')", "Exact profile", show=False),
        Binding("m", "run('memory')", "Memory"),
        Binding("M", "run('memory_stop')", "Stop tracing", show=False),
        Binding("g", "run('gc')", "Force GC"),
        Binding("t", "run('threads')", "Threads"),
        Binding("i", "inject", "Inject agent", show=False),
        Binding("w", "cycle_window", "Window"),
    ]

    def __init__(self, *, id: str | None = None, profile_seconds: float = 5.0) -> None:
        super().__init__(id=id)
        self._profile_seconds = profile_seconds

    def compose(self) -> ComposeResult:
        with TabbedContent(id="tabs"):
            with TabPane("Process", id="tab-process"):
                yield ProcessPane(id="process")
            with TabPane("Timings", id="tab-timings"):
                yield TimingsPane(id="timings")
            with TabPane("Queries", id="tab-queries"):
                yield QueriesPane(id="queries")
            with TabPane("Actions", id="tab-actions"):
                yield ActionsPane(id="actions", profile_seconds=self._profile_seconds)

    def show_tab(self, tab: str) -> None:
        """Show the tab `tab` (its pane built first, so that its widgets can take focus at once)."""
        self.build_tab(tab)
        self.query_one(TabbedContent).active = tab

    def build_tab(self, tab: str) -> None:
        """Build the content of the tab `tab`, if it is not built yet."""
        pane = self.query_one(f"#{tab} > *")
        if isinstance(pane, DeferredPane):
            pane.build()

    @on(TabbedContent.TabActivated)
    def _tab_activated(self, event: TabbedContent.TabActivated) -> None:
        """A tab shown by a click (or any other way than `show_tab`): its content built now."""
        if event.pane.id is not None:
            self.build_tab(event.pane.id)

    def action_inject(self) -> None:
        """`i`: start an agent inside the attached Python process (after a confirmation)."""
        app = agent_host(self.app)
        if app is None or app.attached is None or app.refuses("injecting an agent"):
            return
        pid = app.attached
        from perftop.tui.screens.confirm import Confirm

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_worker(
                    lambda: self._inject(pid), thread=True, group="inject", description=f"inject {pid}"
                )
                self.notify(f"injecting an agent into PID {pid}…")

        self.app.push_screen(
            Confirm(
                f"Start perftop's agent inside PID {pid}?\n\nIt first tries the method on a throwaway copy "
                "of the process's interpreter, then attaches for a moment (pyinjector, or gdb for a busy "
                "process, on Python 3.10-3.13; sys.remote_exec on 3.14+), runs a few lines of Python in "
                "the process and leaves a daemon thread serving a Unix socket. The process keeps running."
            ),
            answered,
        )

    def _inject(self, pid: int) -> None:
        from perftop.launch.inject import InjectError, inject

        socket_dir = getattr(getattr(self.app, "sources", None), "socket_dir", None)
        try:
            path = inject(pid, socket_dir)
        except InjectError as exc:
            self.app.call_from_thread(
                self.notify, f"inject failed: {exc}", severity="error", timeout=15, markup=False
            )
        else:
            self.app.call_from_thread(self.notify, f"agent started in PID {pid} ({path})", markup=False)

    def action_cycle_window(self) -> None:
        """`w` on any tab: the next window for the timings and the queries both, said in a notification."""
        timings = self.query_one(TimingsPane)
        timings.action_cycle_window()
        label = WINDOWS[timings.window_index][1]
        self.query_one(QueriesPane).window_label = label
        self.notify(f"window: {label} (timings and queries)", timeout=2)

    def action_run(self, name: str) -> None:
        """Start an action in the attached process and show the Actions tab. Attached to a parent whose
        workers run agents, first ask where: all workers (the default), one, or the parent itself."""
        titles = {"gc": "forced GC", "memory": "memory tracing", "memory_stop": "memory tracing"}
        app = agent_host(self.app)
        if name in titles and app is not None and app.refuses(titles[name]):
            return
        process = self.query_one(ProcessPane)
        tree = process.sample.tree if process.sample is not None else None
        workers = [w for w in tree.workers if w.has_agent and not w.gone] if tree is not None else []
        if not workers or app is None or app.attached is None:
            self._start(name)
            return
        selected = process.selected_worker
        worker = selected.pid if selected is not None and selected in workers else None

        def answered(target: ActionTarget | None) -> None:
            if target is not None:
                app.action_target = target
                self._start(name)
                app.action_target = None

        from perftop.tui.screens.target_picker import TargetPicker

        picker = TargetPicker(name.replace("_", " "), app.attached, len(workers), worker)
        self.app.push_screen(picker, answered)

    def _start(self, name: str) -> None:
        pane = self.query_one(ActionsPane)
        seconds = pane.profile_seconds
        extra: dict[str, dict[str, object]] = {
            "profile": {"seconds": seconds},
            "profile_exact": {"seconds": seconds},
            "memory_stop": {"stop": True},
        }
        params = extra.get(name, {})
        action = "memory" if name == "memory_stop" else name
        if pane.start(action, params):
            tabs = self.query_one(TabbedContent)
            self.show_tab("tab-actions")
            # The focused widget was in the tab now hidden: keep focus (and so the keys) in this view.
            target = next((w for w in pane.query("*") if w.focusable and w.display), None)
            (target or tabs.query_one(Tabs)).focus()
