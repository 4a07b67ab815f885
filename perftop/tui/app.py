"""The perftop Textual application: a system pane above either the process list or the attached view."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from textual import on
from textual.app import App, ComposeResult, InvalidThemeError, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.driver import Driver
from textual.markup import escape
from textual.reactive import reactive
from textual.screen import Screen
from textual.theme import Theme
from textual.widget import Widget
from textual.widgets import ContentSwitcher, Label, TabbedContent

from perftop._version import __version__
from perftop.tui.messages import (
    AgentReply,
    AgentSampled,
    ProcessesListed,
    ProcessExited,
    ProcessSampled,
    Sampled,
    SystemSampled,
)
from perftop.tui.panes.proclist import ProcessListPane
from perftop.tui.panes.system import SystemPane
from perftop.tui.sampler import Sampler
from perftop.tui.sources import Sources
from perftop.tui.widgets.filterbar import FilterBar
from perftop.tui.widgets.footer import KeysFooter
from perftop.tui.widgets.target import ActionTarget

if TYPE_CHECKING:
    from perftop.recording.recorder import Recorder
    from perftop.tui.panes.process import ProcessPane
    from perftop.tui.panes.timings import TimingsPane

# The attached view's panes (and what they import: SQL plans, action reports, flame graphs) are imported
# when a process is first attached: the process list, where most sessions begin, draws without them.

W = TypeVar("W", bound=Widget)

INTERVALS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
"""The refresh intervals `+` and `-` step through."""
CHANGES_TARGET = frozenset({"gc", "memory"})
"""Agent actions that change the attached process: refused in a read-only session."""


class MainScreen(Screen[None]):
    """The app's first screen. Its initial focus goes straight to the widget the app focuses on start
    (the attached process's pane, or the process list's table), not first to the attached view's tabs
    (Textual's default, the first focusable widget): each change of focus before the first frame restyled
    the focused widgets and rebuilt the footer twice, about 30 ms of CPU each on the machine of the
    benchmarks."""

    AUTO_FOCUS = "ProcessPane, ProcessListPane > LineTable"


class PerftopApp(App[int]):
    """`perftop`: host metrics always; a process list, or one attached process with its agent's data."""

    CSS_PATH = "app.tcss"
    TITLE = "perftop"

    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("space", "toggle_pause", "Pause"),
        Binding("plus,equals_sign", "slower", "+Interval", key_display="+"),
        Binding("minus", "faster", "-Interval", key_display="-"),
        Binding("backspace,h", "detach", "Back"),
        Binding("escape", "dismiss", "Close", show=False),
        Binding("f10", "quit", "Quit", show=False),
        Binding("question_mark", "help", "Keys", key_display="?"),
        Binding("1", "tab('tab-process')", "Process tab", show=False),
        Binding("2", "tab('tab-timings')", "Timings tab", show=False),
        Binding("3", "tab('tab-queries')", "Queries tab", show=False),
        Binding("4", "tab('tab-actions')", "Actions tab", show=False),
        Binding("r", "toggle_recording", "Record", show=False),
    ]

    paused: reactive[bool] = reactive(False)
    """Sampling is paused: the screen keeps the last values."""
    interval: reactive[float] = reactive(1.0)
    """Seconds between samples."""
    attached: reactive[int | None] = reactive(None)
    """The PID shown in the attached view, or None for the process list."""

    def __init__(
        self,
        sources: Sources,
        pid: int | None = None,
        interval: float = 1.0,
        theme_name: str | None = None,
        themes: dict[str, Theme] | None = None,
        start_sampler: bool = True,
        profile_seconds: float = 5.0,
        read_only: bool = False,
    ) -> None:
        super().__init__()
        self.read_only = read_only
        """Refuse the actions that change the target (`perftop web` without --allow-actions)."""
        self.sources = sources
        self._initial_pid = pid
        for theme in (themes or {}).values():
            self.register_theme(theme)
        self._theme_when_mounted: str | None = None
        """The theme to set once mounted, where this Textual cannot be given it before (see below)."""
        if theme_name:
            self._start_with_theme(theme_name)
        self.sampler = Sampler(self, sources, interval)
        self._start_sampler = start_sampler
        self._profile_seconds = profile_seconds
        self.action_target: ActionTarget | None = None
        """Where the agent request being sent runs, when the user picked it (a worker, the parent alone)."""
        self.recorder: Recorder | None = None
        """The recording of the attached process that `r` started, while it runs."""
        self._panes: dict[type[Widget], Widget] = {}
        self.set_reactive(PerftopApp.interval, interval)

    def get_driver_class(self) -> type[Driver]:
        """Textual's driver for this terminal; on Linux, one whose input thread sleeps while nothing is
        typed (perftop.tui.driver)."""
        from perftop.tui.driver import quiet_driver

        return quiet_driver(super().get_driver_class())

    def get_default_screen(self) -> Screen[None]:
        return MainScreen(id="_default")

    def compose(self) -> ComposeResult:
        yield Label("", id="status")
        yield SystemPane(id="system")
        # Started attached, the process list (its table, filter input and sort keys) is made on the first
        # detach: it is not on the first screen, and every widget composed is styled before that frame.
        with ContentSwitcher(initial="list" if self._initial_pid is None else "attached", id="main"):
            if self._initial_pid is None:
                yield ProcessListPane(id="list")
            else:
                from perftop.tui.panes.attached import AttachedView

                yield AttachedView(id="attached", profile_seconds=self._profile_seconds)
        yield KeysFooter()

    def _start_with_theme(self, name: str) -> None:
        """Start in theme `name`: what setting `App.theme` does (its classes, colour filter and CSS
        variables), done before the stylesheet is read. Set once mounted, as before, the theme restyled
        every widget again right after their first styling: a third of `--pid`'s styling before the first
        frame."""
        if name not in self.available_themes:
            raise InvalidThemeError(f"Theme {name!r} has not been registered.")
        refresh_filter = getattr(self, "_refresh_truecolor_filter", None)
        if refresh_filter is None:  # a Textual without it: set the theme once mounted, as Textual documents
            self._theme_when_mounted = name
            return
        self.set_reactive(App.theme, name)
        dark = self.current_theme.dark
        self.update_classes(
            {f"-theme-{name}": True, "-dark-mode": dark, "-light-mode": not dark}, update=False
        )
        refresh_filter(self.ansi_theme)
        self.stylesheet.set_variables(self.get_css_variables())

    async def on_mount(self) -> None:
        if self._theme_when_mounted is not None:
            self.theme = self._theme_when_mounted
        if self._initial_pid is not None:
            await self.attach(self._initial_pid)
        else:
            self.query_one(ProcessListPane).query_one("LineTable").focus()
        self._status()

    def on_ready(self) -> None:
        """The first frame is drawn and every pane composed: data may flow."""
        if self._start_sampler:
            self.sampler.start()

    def on_unmount(self) -> None:
        self.sampler.stop()
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            recorder.on_finish = None  # the app is going: nobody to tell
            recorder.stop()

    # -- data in ---------------------------------------------------------------------------------------

    def _pane(self, kind: type[W]) -> W | None:
        """The pane of that type, or None while the app is starting or shutting down. Found once: the
        panes stay for the app's life, and a query walks the DOM, several times a tick."""
        pane = self._panes.get(kind)
        if pane is not None and pane.is_attached:
            return cast(W, pane)
        try:
            found = self.query_one(kind)
        except NoMatches:
            return None
        self._panes[kind] = found
        return found

    @on(Sampled)
    def _sampled(self, msg: Sampled) -> None:
        """One tick's samples, drawn in one screen update (Textual otherwise may draw between two of
        them, which cost a second update of the screen in about one tick in four)."""
        with self.batch_update():
            for part in msg.parts:
                if isinstance(part, SystemSampled):
                    self._system(part)
                elif isinstance(part, ProcessesListed):
                    self._processes(part)
                elif isinstance(part, ProcessSampled):
                    self._process(part)
                elif isinstance(part, ProcessExited):
                    self._exited(part)
                elif isinstance(part, AgentSampled):
                    self._agent(part)

    def _system(self, msg: SystemSampled) -> None:
        if pane := self._pane(SystemPane):
            pane.sample = msg.sample

    def _process_pane(self) -> ProcessPane | None:
        from perftop.tui.panes.process import ProcessPane

        return self._pane(ProcessPane)

    def _processes(self, msg: ProcessesListed) -> None:
        if self.attached is None and (pane := self._pane(ProcessListPane)):
            pane.rows = msg.rows

    def _process(self, msg: ProcessSampled) -> None:
        if msg.sample.pid == self.attached and (pane := self._process_pane()):
            pane.now = self.sources.now()
            pane.sample = msg.sample

    def _exited(self, msg: ProcessExited) -> None:
        from perftop.tui.panes.timings import TimingsPane

        process, timings = self._process_pane(), self._pane(TimingsPane)
        if msg.pid == self.attached and process and timings:
            process.gone = msg.reason
            timings.gone = msg.reason
            self.notify(f"process {msg.pid} exited: last values kept", severity="warning")

    def _agent(self, msg: AgentSampled) -> None:
        from perftop.tui.panes.actions import ActionsPane
        from perftop.tui.panes.queries import QueriesPane
        from perftop.tui.panes.timings import TimingsPane

        if msg.pid == self.attached and (pane := self._pane(TimingsPane)):
            pane.show(msg.rows, msg.error)
            if queries := self._pane(QueriesPane):
                queries.show(None if msg.rows is None else msg.rows.queries, self.sources.now())
            if actions := self._pane(ActionsPane):
                actions.show_tracing(None if msg.view is None else msg.view.memory, self.sources.now())

    def on_timings_pane_window_changed(self, msg: TimingsPane.WindowChanged) -> None:
        """The timings window the user picked (TimingsPane.WindowChanged): asked of the agent at once."""
        self.sampler.window = msg.window
        self.sampler.poke()

    # -- requests to the agent -------------------------------------------------------------------------

    def refuses(self, what: str) -> bool:
        """True, with a notice saying why, where `what` changes the target and this session is read-only."""
        if self.read_only:
            self.notify(
                f"{what} refused: this session is read-only (perftop web --allow-actions allows it)",
                severity="warning",
                markup=False,
            )
        return self.read_only

    def agent_call(
        self, method: str, params: dict[str, Any], reply_to: Widget, timeout: float = 30.0
    ) -> bool:
        """Send one request to the attached process's agent in a thread worker; the answer is posted to
        `reply_to` as an AgentReply. False where nothing is attached."""
        pid = self.attached
        if pid is None:
            return False
        what = "EXPLAIN ANALYZE" if method == "explain" and params.get("analyze") else None
        if method == "action" and params.get("name") in CHANGES_TARGET:
            what = f"the {params['name']} action"
        if what is not None and self.refuses(what):
            return False
        target = self.action_target or ActionTarget(pid, True)

        def run() -> None:
            from perftop.collectors.agent_client import AgentError

            try:
                result = self.sources.call(target.pid, method, params, timeout, children=target.children)
            except AgentError as exc:
                reply_to.post_message(AgentReply(pid, method, params, error=str(exc)))
            except Exception as exc:
                reply_to.post_message(AgentReply(pid, method, params, error=f"{type(exc).__name__}: {exc}"))
            else:
                reply_to.post_message(AgentReply(pid, method, params, result=result))

        self.run_worker(
            run,
            thread=True,
            group=f"agent-{method}",
            description=f"{method} in pid {pid}",
            exit_on_error=False,
        )
        return True

    # -- attach and detach -----------------------------------------------------------------------------

    @on(ProcessListPane.Attach)
    async def _attach_selected(self, msg: ProcessListPane.Attach) -> None:
        await self.attach(msg.pid)

    async def on_process_pane_attach_worker(self, msg: ProcessPane.AttachWorker) -> None:
        """Enter on a worker of the attached parent (ProcessPane.AttachWorker)."""
        await self.attach(msg.pid)

    def on_process_pane_forget_departed(self) -> None:
        """`x` in the worker table (ProcessPane.ForgetDeparted)."""
        if self.attached is not None:
            self.sources.forget_departed(self.attached)
            self.sampler.poke()
            self.notify("departed workers forgotten")

    async def attach(self, pid: int) -> None:
        """Show the attached view for `pid`. The view is made on the first attach: composing its four
        tabs is more than half of the start-up of the process list, which most sessions begin with."""
        from perftop.tui.panes.actions import ActionsPane
        from perftop.tui.panes.attached import AttachedView
        from perftop.tui.panes.process import ProcessPane
        from perftop.tui.panes.queries import QueriesPane
        from perftop.tui.panes.timings import TimingsPane

        switcher = self.query_one("#main", ContentSwitcher)
        made = not switcher.query_children(AttachedView)
        if made:
            await switcher.add_content(AttachedView(id="attached", profile_seconds=self._profile_seconds))
        view = self.query_one(AttachedView)
        self.attached = pid
        process = self.query_one(ProcessPane)
        process.gone = None
        process.sample = None
        self.query_one(TimingsPane).reset(pid)
        self.query_one(QueriesPane).reset()
        self.query_one(ActionsPane).reset(pid)
        self.query_one("#main", ContentSwitcher).current = "attached"
        if not made:  # a view made now opens on its process tab; one shown before may be on another
            self.query_one(TabbedContent).active = "tab-process"

        def focus() -> None:
            """Focus the process pane, unless a key since (a tab's number, typed as perftop --pid started)
            showed another tab: focus on a hidden tab's pane would switch back to it. Set here, not by
            `focus()`, which waits its turn: a tab's number handled before that turn would lose the focus
            its table took (the process pane, focused and then hidden, leaves no focus at all)."""
            if view.query_one(TabbedContent).active == "tab-process":
                process.screen.set_focus(process)

        self.call_after_refresh(focus)
        self.sampler.attach(pid)
        self._status()

    def action_dismiss(self) -> None:
        """Escape, once no overlay, filter or widget took it: close the notifications shown; it never
        leaves the attached view (that was too easy to do by accident), Backspace or h does."""
        if self.screen.query("Toast"):
            self.clear_notifications()
        elif self.attached is not None:
            self.notify("Backspace or h: back to the process list", timeout=2)

    async def action_detach(self) -> None:
        """Backspace or h: back to the process list (made here the first time, when started attached)."""
        if self.attached is None:
            return
        pid = self.attached
        self.attached = None
        self.sampler.attach(None)
        switcher = self.query_one("#main", ContentSwitcher)
        if not switcher.query_children(ProcessListPane):
            await switcher.add_content(ProcessListPane(id="list"))
        switcher.current = "list"
        plist = self.query_one(ProcessListPane)
        plist.select_pid(pid)
        plist.query_one("LineTable").focus()
        self._status()

    # -- keys ------------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Detaching is offered only from the main screen while attached, not while a filter is open."""
        if action == "detach":  # asked for each footer rebuild: the DOM query last, only where it matters
            if self.attached is None or self.screen is not self.screen_stack[0]:
                return False
            return not any(bar.has_class("-open") and bar.is_on_screen for bar in self.query(FilterBar))
        return True

    def action_tab(self, tab: str) -> None:
        """Number keys: switch tabs of the attached view."""
        if self.attached is not None:
            from perftop.tui.panes.attached import AttachedView

            tabs = self.query_one(TabbedContent)
            self.query_one(AttachedView).show_tab(tab)  # a tab not shown yet is built first
            pane = self.query_one(f"#{tab} > *")
            tables = [t for t in pane.query("DataTable") if t.display and t.parent is pane]
            # A pane with no table to show (no agent yet) takes focus itself, so that focus stays inside
            # the attached view and its keys (p, m, g, t, i...) keep working. Focus is set now, not later
            # (`focus()` waits its turn in the queue): a key typed right after the tab's number (`3/`)
            # goes to the tab it opened.
            if tables and not pane.has_class("-no-agent", "-empty"):
                target: Widget = tables[0]
            elif pane.can_focus:
                target = pane
            else:
                target = next((w for w in pane.query("*") if w.focusable), tabs)
            self.screen.set_focus(target)

    def action_toggle_recording(self) -> None:
        """`r`: start recording the attached process to a file here, or stop the recording under way."""
        recorder = self.recorder
        if recorder is not None:
            self.recorder = None
            self.run_worker(recorder.stop, thread=True, group="recording", description="stop recording")
            self.notify(f"recording stopped: {recorder.intervals} intervals in {recorder.path}", markup=False)
            self._status()
            return
        pid = self.attached
        if pid is None:
            self.notify("attach to a process first (Enter in the list), then press r to record it")
            return
        # SQLAlchemy and the recording store load on the first recording, not with every viewer.
        from perftop.recording.errors import RecordingError
        from perftop.recording.recorder import Recorder

        path = f"perftop-{pid}-{time.strftime('%Y%m%d-%H%M%S')}.rec"
        recorder = Recorder(
            pid,
            path,
            self.interval,
            getattr(self.sources, "socket_dir", None),
            on_finish=lambda r: self.call_from_thread(self._recording_ended, r),
        )
        self.recorder = recorder

        def start() -> None:
            try:
                recorder.start()
            except RecordingError as exc:
                self.call_from_thread(self._recording_failed, recorder, str(exc))
            else:
                self.call_from_thread(self.notify, f"recording pid {pid} to {path} (r stops)")

        self.run_worker(start, thread=True, group="recording", description=f"record pid {pid}")
        self._status()

    def _recording_failed(self, recorder: Recorder, message: str) -> None:
        if self.recorder is recorder:
            self.recorder = None
        self.notify(f"cannot record: {message}", severity="error", markup=False)
        self._status()

    def _recording_ended(self, recorder: Recorder) -> None:
        if self.recorder is recorder:
            self.recorder = None
        why = recorder.error or recorder.ended or "stopped"
        self.notify(
            f"recording ended ({why}): {recorder.intervals} intervals in {recorder.path}", markup=False
        )
        self._status()

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused

    def watch_paused(self, paused: bool) -> None:
        self.sampler.paused = paused
        self.sampler.poke()
        self._status()

    def action_slower(self) -> None:
        self.interval = next((i for i in INTERVALS if i > self.interval), INTERVALS[-1])

    def action_faster(self) -> None:
        self.interval = next((i for i in reversed(INTERVALS) if i < self.interval), INTERVALS[0])

    def watch_interval(self, interval: float) -> None:
        self.sampler.interval = interval
        self.sampler.poke()
        self._status()

    def action_help(self) -> None:
        """`?`: the panel of every key that applies here."""
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def _status(self) -> None:
        if not self.is_running:
            return
        where = "process list" if self.attached is None else f"attached to {self.attached}"
        state = " · [reverse] PAUSED [/reverse]" if self.paused else ""
        state += " · read-only" if self.read_only else ""
        if self.recorder is not None:
            state += f" · ● REC {escape(str(self.recorder.path))}"
        self.query_one("#status", Label).update(
            f"perftop {__version__} · {where} · every {self.interval:g}s{state} · ? keys · ctrl+p commands"
        )

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand(
            "app: Pause or resume", "Freeze the screen on the current values", self.action_toggle_pause
        )
        yield SystemCommand("app: Slower refresh", "Lengthen the refresh interval", self.action_slower)
        yield SystemCommand("app: Faster refresh", "Shorten the refresh interval", self.action_faster)
        if self.attached is not None:
            yield SystemCommand("process: Back to the list", "Detach from the process", self.action_detach)
            yield SystemCommand(
                "process: Start or stop recording",
                "Record this process to a file for perftop replay",
                self.action_toggle_recording,
            )
            from perftop.tui.panes.attached import AttachedView

            view = self.query_one(AttachedView)
            for verb, action, help_text in (
                ("CPU profile", "profile", "Sample every thread for the set seconds"),
                ("Exact profile", "profile_exact", "cProfile for the set seconds"),
                ("Memory snapshot", "memory", "Start tracemalloc, or diff against the last snapshot"),
                ("Stop memory tracing", "memory_stop", "Stop tracemalloc and free its memory"),
                ("Force GC", "gc", "gc.collect() with before/after"),
                ("Thread dump", "threads", "Every thread's stack, and asyncio tasks"),
            ):
                yield SystemCommand(f"process: {verb}", help_text, lambda a=action: view.action_run(a))
        else:
            plist = self.query_one(ProcessListPane)
            yield SystemCommand("processes: Filter", "Filter by name or command line", plist.action_filter)
            yield SystemCommand("processes: Cycle sort", "cpu, mem, pid, name", plist.action_cycle_sort)
            yield SystemCommand("processes: Attach", "Attach to the selected process", plist.action_attach)
