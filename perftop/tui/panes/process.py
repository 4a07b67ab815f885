"""The process pane: one process's resources, each against its rlimit and its cgroup limit."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Label, Static

from perftop.collectors.model import CgroupInfo, Limit, ProcessSample
from perftop.tui.widgets.bar import UsageBar
from perftop.units import fmt_bytes, fmt_count, fmt_duration, fmt_limit


class LimitRow(Horizontal):
    """`nofile  ████░░░ 41%  used 420 of 1,024 (hard 4,096)`."""

    DEFAULT_CSS = """
    LimitRow { height: 1; }
    LimitRow > .name { width: 12; color: $accent; }
    LimitRow > UsageBar { width: 22; margin-right: 1; }
    LimitRow > .values { width: 1fr; }
    """

    ratio: reactive[float | None] = reactive(None)
    """Usage as a share of the limit, or None where unlimited or unknown."""
    text: reactive[str] = reactive("")
    """Usage and limits in words."""

    def __init__(self, name: str, classes: str | None = None) -> None:
        super().__init__(id=f"limit-{name.replace('.', '-')}", classes=classes)
        self.limit_name = name
        self._values = Label("", classes="values", markup=False)

    def compose(self) -> ComposeResult:
        yield Label(self.limit_name, classes="name")
        yield UsageBar().data_bind(LimitRow.ratio)
        yield self._values

    def watch_text(self, text: str) -> None:
        self._values.update(text, layout=False)


def limit_text(lim: Limit) -> str:
    """`used 420 of 1,024 (hard 4,096)`, with unlimited values named as such."""
    soft = fmt_limit(lim.soft, lim.unit)
    hard = fmt_limit(lim.hard, lim.unit)
    used = "?" if lim.used is None else fmt_limit(lim.used, lim.unit)
    return f"used {used} of {soft} (hard {hard})"


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
    """Resources of the attached process. When it exits, says so and keeps the last values."""

    DEFAULT_CSS = """
    ProcessPane { height: 1fr; border: round $primary; border-title-color: $primary; padding: 0 1; }
    ProcessPane #gone { display: none; background: $error; color: $text; text-style: bold; }
    ProcessPane.-gone #gone { display: block; }
    ProcessPane #head { height: auto; text-wrap: nowrap; text-overflow: ellipsis; }
    ProcessPane .section { color: $secondary; text-style: bold; }
    ProcessPane .cgroup { display: none; }
    ProcessPane.-cgroup .cgroup { display: block; }
    """

    sample: reactive[ProcessSample | None] = reactive(None, always_update=True, repaint=False)
    """The latest sample of the attached process."""
    gone: reactive[str | None] = reactive(None)
    """Why the process can no longer be sampled (it exited), or None while it runs."""
    now: reactive[float] = reactive(0.0, repaint=False)
    """The clock used for uptime and for the age of the connections count."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "process"
        self._head_pid: int | None = None
        self._gone = Static("", id="gone", markup=False)
        self._head = Static("waiting for the first sample…", id="head", markup=False)
        self._cgroup_title = Label("cgroup", classes="section cgroup", id="cgroup-title", markup=False)
        self._rows: dict[str, LimitRow] = {
            name: LimitRow(name, classes="cgroup") for name in ("cg.memory", "cg.pids", "cg.cpu")
        }

    def compose(self) -> ComposeResult:
        yield self._gone
        yield self._head
        yield self._cgroup_title
        yield from self._rows.values()
        yield Label("rlimits: usage against soft limit (hard)", classes="section", id="limits-title")

    def watch_gone(self, reason: str | None) -> None:
        self.set_class(reason is not None, "-gone")
        if reason is not None:
            self._gone.update(f"process gone: {reason}. Last values kept below.")

    def watch_sample(self, p: ProcessSample | None) -> None:
        if p is None or not self.is_mounted:
            return
        relayout = self._head_pid != p.pid  # the head's height is fixed after its first text
        self._head_pid = p.pid
        if (title := f"process {p.pid} · {p.name}") != self.border_title:
            self.border_title = title
        uptime = fmt_duration(self.now - p.create_time) if self.now else "-"
        conn_age = (
            ""
            if p.connections_sampled_at is None or not self.now
            else f" ({max(0.0, self.now - p.connections_sampled_at):.0f}s ago)"
        )
        cmd = " ".join(" ".join(p.cmdline).split()) or p.name
        self._head.update(
            f"pid {p.pid} · {p.name} · user {p.username}  status {p.status}  up {uptime}\n"
            f"cpu {p.cpu_percent:5.1f}%  rss {fmt_bytes(p.rss_bytes)}  vms {fmt_bytes(p.vms_bytes)}"
            f"  threads {p.num_threads}  fds {fmt_count(p.num_fds)}"
            f"  conns {fmt_count(p.num_connections)}{conn_age}\n"
            f"cmd {cmd[:200]}",
            layout=relayout,
        )
        cg = p.cgroup
        self.set_class(cg is not None, "-cgroup")
        if cg is not None:
            self._cgroup_title.update(f"cgroup v{cg.version} {cg.path}", layout=False)
            for name, ratio, text in cgroup_rows(cg):
                self._show(name, ratio, text)
        for lim in p.limits:
            self._show(lim.name, lim.ratio, limit_text(lim))

    def _show(self, name: str, ratio: float | None, text: str) -> None:
        row = self._rows.get(name)
        if row is None:
            row = LimitRow(name)
            self._rows[name] = row
            self.mount(row)
        row.ratio, row.text = ratio, text
