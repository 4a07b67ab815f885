"""The process pane: one process's resources, each against its rlimit and its cgroup limit; for a parent
(a gunicorn master, a Celery or multiprocessing pool), its tree's totals and a table of its workers."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Label, Static

from perftop.collectors.model import CgroupInfo, Limit, ProcessSample, ProcessTree, WorkerRow
from perftop.render.units import fmt_bytes, fmt_count, fmt_duration, fmt_limit, fmt_ms
from perftop.tui.widgets.bar import UsageBar
from perftop.tui.widgets.proctable import LineTable

WORKER_SORTS: tuple[str, ...] = ("cpu", "rss", "req/s", "p99", "age", "pid")
"""The worker table's sort orders, cycled by `o`."""
MAX_WORKER_LINES = 12
"""The worker table's height at most; more workers scroll."""


def sort_workers(rows: tuple[WorkerRow, ...], sort: str) -> list[WorkerRow]:
    """Live workers first, then departed ones; each group by `sort` (figures descending, age oldest first,
    PID ascending)."""
    keys: dict[str, Callable[[WorkerRow], float]] = {
        "cpu": lambda r: -r.cpu_percent,
        "rss": lambda r: -r.rss_bytes,
        "req/s": lambda r: -(r.requests_per_s or 0.0),
        "p99": lambda r: -(r.p99_ms or 0.0),
        "age": lambda r: r.started_at,
        "pid": lambda r: r.pid,
    }
    key = keys[sort]
    return sorted(rows, key=lambda r: (r.gone, key(r), r.pid))


def _worker_line(pid: str, age: str, cpu: str, rss: str, rate: str, p99: str, state: str) -> str:
    return f" {pid:>7} {age:>8} {cpu:>6} {rss:>10} {rate:>8} {p99:>9}  {state}"


def worker_line(w: WorkerRow, now: float) -> str:
    """One row of the worker table."""
    age = fmt_duration(max(0.0, (w.gone_at or now) - w.started_at)) if now else "-"
    state = "gone" if w.gone else ("agent" if w.has_agent else "no agent")
    return _worker_line(
        str(w.pid),
        age,
        f"{w.cpu_percent:5.1f}",
        fmt_bytes(w.rss_bytes),
        "-" if w.requests_per_s is None else f"{w.requests_per_s:.1f}",
        fmt_ms(w.p99_ms),
        f"{state} · {w.name}",
    )


def tree_text(t: ProcessTree) -> str:
    """The tree's totals in one line."""
    pss = "" if t.pss_bytes is None else f"  pss {fmt_bytes(t.pss_bytes)}"
    return (
        f"tree of {len(t.pids)}: cpu {t.cpu_percent:5.1f}%  rss {fmt_bytes(t.rss_bytes)}{pss}"
        f"  threads {t.num_threads}  fds {fmt_count(t.num_fds)}  conns {fmt_count(t.num_connections)}"
        f"  departed {t.departed}"
    )


class LimitRow(Horizontal):
    """`nofile  ████░░░ 41%  used 420 of 1,024 (hard 4,096)`. The row draws its name itself, beside its
    two children: a pane shows about twenty rows, and each widget fewer is one fewer to style and lay out
    before the attached view's first frame."""

    COMPONENT_CLASSES = {"limit-row--name"}
    DEFAULT_CSS = """
    LimitRow { height: 1; }
    LimitRow > .limit-row--name { color: $accent; }
    LimitRow > UsageBar { width: 22; margin: 0 1 0 12; }
    LimitRow > .values { width: 1fr; }
    """

    ratio: reactive[float | None] = reactive(None)
    """Usage as a share of the limit, or None where unlimited or unknown."""
    text: reactive[str] = reactive("")
    """Usage and limits in words."""

    def __init__(
        self, name: str, classes: str | None = None, ratio: float | None = None, text: str = ""
    ) -> None:
        super().__init__(id=f"limit-{name.replace('.', '-')}", classes=classes)
        self.limit_name = name
        self.set_reactive(LimitRow.ratio, ratio)
        self.set_reactive(LimitRow.text, text)
        self._values = Label(text, classes="values", markup=False)

    def compose(self) -> ComposeResult:
        # The bar starts at the row's ratio: styled once, in its state (UsageBar).
        yield UsageBar(self.ratio).data_bind(LimitRow.ratio)
        yield self._values

    def render(self) -> Text:
        """The name, in the 12 columns left of the bar's margin."""
        return Text(
            self.limit_name[:12], style=self.get_component_rich_style("limit-row--name", partial=True)
        )

    def watch_text(self, text: str) -> None:
        self._values.update(text, layout=False)


def limit_text(lim: Limit) -> str:
    """`used 420 of 1,024 (hard 4,096)`, with unlimited values named as such."""
    soft = fmt_limit(lim.soft, lim.unit)
    hard = fmt_limit(lim.hard, lim.unit)
    used = "?" if lim.used is None else fmt_limit(lim.used, lim.unit)
    return f"used {used} of {soft} (hard {hard})"


def unmeasured_text(limits: list[Limit]) -> str:
    """The limits whose usage the OS does not tell, in one line: `core 0 (hard unlimited) · nice 0`."""

    def one(lim: Limit) -> str:
        soft = fmt_limit(lim.soft, lim.unit)
        hard = fmt_limit(lim.hard, lim.unit)
        return f"{lim.name} {soft}" if hard == soft else f"{lim.name} {soft} (hard {hard})"

    return "usage not measured: " + " · ".join(one(lim) for lim in limits) if limits else ""


def cgroup_rows(cg: CgroupInfo) -> list[tuple[str, float | None, str]]:
    """(name, ratio, text) for each cgroup limit worth a bar."""

    def ratio(used: float | None, limit: float | None) -> float | None:
        return None if used is None or not limit else used / limit

    throttled = (
        "throttled: unknown"
        if cg.cpu_throttled_count is None
        else f"throttled {cg.cpu_throttled_count:,}x, {cg.cpu_throttled_s or 0:.1f}s"
    )
    cpu = "no quota" if cg.cpu_limit_cores is None else f"quota {cg.cpu_limit_cores:g} cores"
    oom = "-" if cg.oom_kills is None else str(cg.oom_kills)
    return [
        (
            "cg.memory",
            ratio(cg.memory_used_bytes, cg.memory_limit_bytes),
            f"used {fmt_bytes(cg.memory_used_bytes)} of {fmt_limit(cg.memory_limit_bytes, 'bytes')}"
            f" · OOM kills {oom}",
        ),
        (
            "cg.pids",
            ratio(cg.pids_current, cg.pids_limit),
            f"used {fmt_count(cg.pids_current)} of {fmt_limit(cg.pids_limit, '')}",
        ),
        ("cg.cpu", None, f"{cpu} · {throttled}"),
    ]


class ProcessPane(VerticalScroll):
    """Resources of the attached process. When it exits, says so and keeps the last values. A parent's
    workers are listed in a table; Enter attaches to the one under the cursor."""

    BINDINGS = [
        Binding("enter", "attach_worker", "Attach worker"),
        Binding("o", "cycle_worker_sort", "Sort workers"),
        Binding("x", "forget_departed", "Forget gone workers", show=False),
    ]

    class AttachWorker(Message):
        """The user chose a worker to attach to."""

        def __init__(self, pid: int) -> None:
            super().__init__()
            self.pid = pid

    class ForgetDeparted(Message):
        """The user asked to drop the departed workers' rows and data (a reset)."""

    DEFAULT_CSS = """
    ProcessPane { height: 1fr; border: round $primary; border-title-color: $primary; padding: 0 1; }
    ProcessPane #gone { display: none; background: $error; color: $text; text-style: bold; }
    ProcessPane.-gone #gone { display: block; }
    ProcessPane #head { height: auto; text-wrap: nowrap; text-overflow: ellipsis; }
    ProcessPane .section { color: $secondary; text-style: bold; }
    ProcessPane .cgroup { display: none; }
    ProcessPane.-cgroup .cgroup { display: block; }
    ProcessPane .tree { display: none; }
    ProcessPane.-tree .tree { display: block; }
    ProcessPane #tree-head { height: 1; text-style: bold; color: $accent; }
    ProcessPane #workers { height: 1; }
    ProcessPane #cgroup-limits, ProcessPane #limits { height: auto; }
    ProcessPane #limits-unmeasured { height: auto; color: $text-muted; }
    """

    sample: reactive[ProcessSample | None] = reactive(None, always_update=True, repaint=False)
    """The latest sample of the attached process."""
    gone: reactive[str | None] = reactive(None)
    """Why the process can no longer be sampled (it exited), or None while it runs."""
    now: reactive[float] = reactive(0.0, repaint=False)
    """The clock used for uptime and for the age of the connections count."""
    worker_sort: reactive[str] = reactive("cpu")
    """The worker table's sort order, one of WORKER_SORTS."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "process"
        self._head_pid: int | None = None
        self._gone = Static("", id="gone", markup=False)
        self._head = Static("waiting for the first sample…", id="head", markup=False)
        self._head_text = ""
        self._cgroup_text = ""
        self._title_text = ""
        """The texts shown, kept to update (and so repaint) only what changed."""
        self._cgroup_title = Label("cgroup", classes="section cgroup", id="cgroup-title", markup=False)
        self._rows: dict[str, LimitRow] = {
            name: LimitRow(name, classes="cgroup") for name in ("cg.memory", "cg.pids", "cg.cpu")
        }
        self._tree_title = Label("", classes="section tree", id="tree-title", markup=False)
        self._tree_head = Static(
            _worker_line("PID", "AGE", "CPU%", "RSS", "REQ/S", "P99", "STATE"),
            classes="tree",
            id="tree-head",
            markup=False,
        )
        self._workers = LineTable(id="workers")
        self._workers.add_class("tree")
        self._shown_workers: list[WorkerRow] = []
        # The limit rows sit in boxes of their own: Textual repaints every child of a container that
        # overlaps what changed, so rows straight in the pane were redrawn with each new head line.
        self._cgroup_box = Vertical(
            self._cgroup_title, *self._rows.values(), id="cgroup-limits", classes="cgroup"
        )
        self._unmeasured = Static("", id="limits-unmeasured", markup=False)
        self._unmeasured_text = ""
        self._limits = Vertical(
            Label("rlimits: usage against soft limit (hard)", classes="section", id="limits-title"),
            self._unmeasured,
            id="limits",
        )

    def compose(self) -> ComposeResult:
        yield self._gone
        yield self._head
        yield self._tree_title
        yield self._tree_head
        yield self._workers
        yield self._cgroup_box
        yield self._limits

    def watch_gone(self, reason: str | None) -> None:
        self.set_class(reason is not None, "-gone")
        if reason is not None:
            self._gone.update(f"process gone: {reason}. Last values kept below.")

    def watch_sample(self, p: ProcessSample | None) -> None:
        if p is None or not self.is_mounted:
            return
        relayout = self._head_pid != p.pid  # the head's height is fixed after its first text
        self._head_pid = p.pid
        if (title := f"process {p.pid} · {p.name}") != self._title_text:
            self._title_text = title
            self.border_title = title
        uptime = fmt_duration(self.now - p.create_time) if self.now else "-"
        conn_age = (
            ""
            if p.connections_sampled_at is None or not self.now
            else f" ({max(0.0, self.now - p.connections_sampled_at):.0f}s ago)"
        )
        cmd = " ".join(" ".join(p.cmdline).split()) or p.name
        head = (
            f"pid {p.pid} · {p.name} · user {p.username}  status {p.status}  up {uptime}\n"
            f"cpu {p.cpu_percent:5.1f}%  rss {fmt_bytes(p.rss_bytes)}  vms {fmt_bytes(p.vms_bytes)}"
            f"  threads {p.num_threads}  fds {fmt_count(p.num_fds)}"
            f"  conns {fmt_count(p.num_connections)}{conn_age}\n"
            f"cmd {cmd[:200]}"
        )
        if relayout or head != self._head_text:  # an update repaints: its ancestors are redrawn too
            self._head_text = head
            self._head.update(head, layout=relayout)
        self._show_tree(p.tree)
        cg = p.cgroup
        self.set_class(cg is not None, "-cgroup")
        new: list[LimitRow] = []
        if cg is not None:
            if (title := f"cgroup v{cg.version} {cg.path}") != self._cgroup_text:
                self._cgroup_text = title
                self._cgroup_title.update(title, layout=False)
            for name, ratio, text in cgroup_rows(cg):
                self._show(name, ratio, text, new)
        unmeasured: list[Limit] = []
        for lim in p.limits:
            if lim.used is None and lim.name not in self._rows:
                unmeasured.append(lim)  # a bar row only where there is a usage to draw against the limit
            else:
                self._show(lim.name, lim.ratio, limit_text(lim), new)
        if (text := unmeasured_text(unmeasured)) != self._unmeasured_text:
            self._unmeasured_text = text
            self._unmeasured.update(text)
        for i, b in enumerate(p.listen_backlog[:4]):  # requests the app has not taken yet, per listener
            ratio = b.queued / b.max if b.max else None
            most = "?" if b.max is None else fmt_count(b.max)
            self._show(
                "backlog" if i == 0 else f"backlog{i + 1}",
                ratio,
                f"{b.queued} queued of {most} on {b.address}",
                new,
            )
        if new:  # one mount for all the rows the first sample brings: one layout, not one per row
            self._limits.mount_all(new, before=self._unmeasured)

    @property
    def shown_workers(self) -> list[int]:
        """The workers' PIDs in table order."""
        return [w.pid for w in self._shown_workers]

    @property
    def selected_worker(self) -> WorkerRow | None:
        """The worker under the table's cursor, if any."""
        row = self._workers.cursor_row
        return self._shown_workers[row] if 0 <= row < len(self._shown_workers) else None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The worker keys apply (and show in the footer) only while there are workers."""
        if action in ("attach_worker", "cycle_worker_sort", "forget_departed"):
            return self.has_class("-tree")
        return True

    def _show_tree(self, tree: ProcessTree | None) -> None:
        if self.has_class("-tree") != (tree is not None):
            self.set_class(tree is not None, "-tree")
            self.refresh_bindings()
        if tree is None:
            self._shown_workers = []
            self._workers.set_rows([])
            return
        if not self._shown_workers and self.has_focus:
            self.call_after_refresh(self._workers.focus)
        selected = self.selected_worker
        rows = sort_workers(tree.workers, self.worker_sort)
        self._shown_workers = rows
        title = f"{tree_text(tree)} · workers {len(rows)} · sort {self.worker_sort} (o) · Enter attaches"
        self._tree_title.update(title, layout=False)
        height = max(1, min(len(rows), MAX_WORKER_LINES))
        if self._workers.styles.height is None or self._workers.styles.height.value != height:
            self._workers.styles.height = height
        self._workers.set_rows([worker_line(w, self.now) for w in rows])
        if selected is not None and selected.pid in self.shown_workers:
            self._workers.move_cursor(self.shown_workers.index(selected.pid))

    def watch_worker_sort(self) -> None:
        if self.sample is not None and self.is_mounted:
            self._show_tree(self.sample.tree)

    def action_cycle_worker_sort(self) -> None:
        self.worker_sort = WORKER_SORTS[(WORKER_SORTS.index(self.worker_sort) + 1) % len(WORKER_SORTS)]

    def action_attach_worker(self) -> None:
        worker = self.selected_worker
        if worker is None:
            return
        if worker.gone:
            self.notify(f"worker {worker.pid} has exited: its last data stays in the merged view")
            return
        self.post_message(self.AttachWorker(worker.pid))

    def action_forget_departed(self) -> None:
        self.post_message(self.ForgetDeparted())

    def on_focus(self) -> None:
        """With workers listed, focus goes to their table: the arrows move among them at once."""
        if self.has_class("-tree"):
            self._workers.focus()

    @on(LineTable.Clicked)
    def _worker_clicked(self, event: LineTable.Clicked) -> None:
        event.stop()
        self.action_attach_worker()

    def _show(self, name: str, ratio: float | None, text: str, new: list[LimitRow]) -> None:
        """Show one limit's row; a row not seen before is made and added to `new`, to be mounted."""
        row = self._rows.get(name)
        if row is None:
            self._rows[name] = LimitRow(name, ratio=ratio, text=text)
            new.append(self._rows[name])
        else:
            row.ratio, row.text = ratio, text
