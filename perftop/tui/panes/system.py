"""The system pane: CPU (total and per core), load, memory and swap, disk and network rates, PSI."""

from __future__ import annotations

from collections import deque

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Label

from perftop.collectors.model import SystemSample
from perftop.render.units import fmt_bytes, fmt_rate
from perftop.tui.widgets.bar import UsageBar
from perftop.tui.widgets.spark import TextSparkline

HISTORY = 60
"""Samples kept for each sparkline."""
_LEVELS = " ▁▂▃▄▅▆▇█"


def core_glyphs(per_cpu: tuple[float, ...]) -> str:
    """One block character per core, its height the core's busy share."""
    return "".join(_LEVELS[min(8, max(0, round(p / 100 * 8)))] for p in per_cpu)


class _Row(Horizontal):
    """A label, an optional bar, and a history sparkline on one line."""

    DEFAULT_CSS = """
    _Row { height: 1; }
    _Row > .name { width: 5; color: $accent; text-style: bold; }
    _Row > .text { width: 34; }
    _Row > UsageBar { width: 18; margin-right: 1; }
    _Row > TextSparkline { width: 1fr; min-width: 8; }
    """


class SystemPane(Vertical):
    """Host metrics with a 60-sample history each. Data arrives through the `sample` reactive."""

    DEFAULT_CSS = """
    SystemPane { height: auto; border: round $primary; border-title-color: $primary; padding: 0 1; }
    SystemPane #cores { height: 1; color: $text-muted; }
    """

    sample: reactive[SystemSample | None] = reactive(None, always_update=True, repaint=False)
    """The latest host sample; each one is appended to the histories."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "system"
        self._hist: dict[str, deque[float]] = {
            k: deque(maxlen=HISTORY) for k in ("cpu", "mem", "disk", "net")
        }

        self._texts = {k: Label("-", classes="text", id=f"{k}-text", markup=False) for k in self._hist}
        self._sparks = {k: TextSparkline(id=f"{k}-spark") for k in self._hist}
        self._bars = {k: UsageBar(id=f"{k}-bar") for k in ("cpu", "mem")}
        self._cores = Label("", id="cores", markup=False)
        self._shown: dict[str, str] = {}
        """The text each label shows, by key: a label is updated only when its text changes."""

    def compose(self) -> ComposeResult:
        for key in self._hist:
            with _Row(id=f"row-{key}"):
                yield Label(key, classes="name")
                yield self._texts[key]
                if key in self._bars:
                    yield self._bars[key]
                yield self._sparks[key]
        yield self._cores

    def watch_sample(self, sample: SystemSample | None) -> None:
        if sample is None or not self.is_mounted:
            return
        s = sample
        self._set(
            "cpu", f"{s.cpu_percent:5.1f}%  load {s.load_avg[0]:.2f} {s.load_avg[1]:.2f}", s.cpu_percent
        )
        self._bars["cpu"].ratio = s.cpu_percent / 100
        mem, sw = s.memory, s.swap
        swap = f"swap {sw.percent:.0f}%" if sw.total_bytes else "no swap"
        self._set("mem", f"{fmt_bytes(mem.used_bytes)}/{fmt_bytes(mem.total_bytes)} {swap}", mem.percent)
        self._bars["mem"].ratio = mem.percent / 100
        d = s.disk_io
        self._set(
            "disk",
            f"r {fmt_rate(d.read_bytes_per_s)} w {fmt_rate(d.write_bytes_per_s)}"
            f" {d.read_ops_per_s + d.write_ops_per_s:.0f}op/s",
            d.read_bytes_per_s + d.write_bytes_per_s,
        )
        n = s.net_io
        self._set(
            "net",
            f"↑ {fmt_rate(n.sent_bytes_per_s)}  ↓ {fmt_rate(n.recv_bytes_per_s)}",
            n.sent_bytes_per_s + n.recv_bytes_per_s,
        )
        cores = " ".join(f"{p:.0f}" for p in s.per_cpu_percent[:8]) + (
            " …" if len(s.per_cpu_percent) > 8 else ""
        )
        if s.pressure:
            psi = " ".join(f"{name} {p.some_avg10:.1f}%" for name, p in s.pressure.items())
            psi = f"psi {psi}"
        else:
            psi = "psi n/a"
        text = f"cores [{core_glyphs(s.per_cpu_percent)}] {cores}%  ·  {psi}"
        if text != self._shown.get("cores"):
            self._shown["cores"] = text
            self._cores.update(text, layout=False)

    def _set(self, key: str, text: str, value: float) -> None:
        if text != self._shown.get(key):  # an update repaints, and a repaint redraws its ancestors too
            self._shown[key] = text
            self._texts[key].update(text, layout=False)
        hist = self._hist[key]
        hist.append(value)
        self._sparks[key].data = tuple(hist)
