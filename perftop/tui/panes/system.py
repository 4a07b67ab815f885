"""The system pane: CPU (total and per core), load, memory and swap, disk and network rates, PSI."""

from __future__ import annotations

from collections import deque

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.content import Content
from textual.reactive import reactive
from textual.style import Style as VisualStyle
from textual.widget import Widget
from textual.widgets import Label

from perftop.collectors.model import SystemSample
from perftop.render.units import fmt_bytes, fmt_rate
from perftop.tui.widgets.bar import bar_state, bar_text
from perftop.tui.widgets.spark import spark_text

HISTORY = 60
"""Samples kept for each sparkline."""
_LEVELS = " ▁▂▃▄▅▆▇█"


def core_glyphs(per_cpu: tuple[float, ...]) -> str:
    """One block character per core, its height the core's busy share."""
    return "".join(_LEVELS[min(8, max(0, round(p / 100 * 8)))] for p in per_cpu)


class _Row(Widget):
    """One host figure on one line: its name, its values in words, a usage bar (cpu and mem) and its
    history as a sparkline (the newest on the right). One widget, not four: the line changes every tick,
    and what a tick costs Textual grows with the widgets it redraws."""

    COMPONENT_CLASSES = {
        "row--name",
        "row--spark",
        "row--bar",
        "row--bar-warning",
        "row--bar-error",
        "row--bar-unknown",
    }
    DEFAULT_CSS = """
    _Row { height: 1; }
    _Row > .row--name { color: $accent; text-style: bold; }
    _Row > .row--spark { color: $accent; }
    _Row > .row--bar { color: $success; }
    _Row > .row--bar-warning { color: $warning; text-style: bold; }
    _Row > .row--bar-error { color: $error; text-style: bold reverse; }
    _Row > .row--bar-unknown { color: $text-muted; }
    """
    NAME_WIDTH = 5
    TEXT_WIDTH = 34
    BAR_WIDTH = 18
    """The bar with its percentage; a blank column follows it."""
    SPARK_MIN_WIDTH = 8

    def __init__(self, key: str, with_bar: bool) -> None:
        super().__init__(id=f"{key}-text")
        self.key = key
        self.with_bar = with_bar
        self._shown: tuple[str, tuple[str, str], tuple[float, ...]] = ("-", self._bar(None), ())
        """What the line shows: the figures in words, the bar and its state, the history."""

    def show(self, text: str, ratio: float | None, history: tuple[float, ...]) -> None:
        """New figures; the line is redrawn only if what it shows changed."""
        shown = (text, self._bar(ratio), history)
        if shown != self._shown:
            self._shown = shown
            self.refresh()

    def _bar(self, ratio: float | None) -> tuple[str, str]:
        return (bar_text(ratio, self.BAR_WIDTH), bar_state(ratio)) if self.with_bar else ("", "")

    def render(self) -> Content:
        width = self.size.width
        style = self.get_visual_style
        text, (bar, state), history = self._shown
        parts: list[str | tuple[str, VisualStyle]] = [
            (self.key[: self.NAME_WIDTH].ljust(self.NAME_WIDTH), style("row--name", partial=True)),
            text[: self.TEXT_WIDTH].ljust(self.TEXT_WIDTH),
        ]
        used = self.NAME_WIDTH + self.TEXT_WIDTH
        if self.with_bar:
            parts += [(bar, style(f"row--bar{state}", partial=True)), " "]
            used += self.BAR_WIDTH + 1
        spark = max(self.SPARK_MIN_WIDTH, width - used)
        parts.append((spark_text(history, spark).rjust(spark), style("row--spark", partial=True)))
        return Content.assemble(*parts).truncate(width)


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

        self._rows = {k: _Row(k, with_bar=k in ("cpu", "mem")) for k in self._hist}
        self._cores = Label("", id="cores", markup=False)
        self._cores_text = ""

    def compose(self) -> ComposeResult:
        yield from self._rows.values()
        yield self._cores

    def watch_sample(self, sample: SystemSample | None) -> None:
        if sample is None or not self.is_mounted:
            return
        s = sample
        self._set(
            "cpu",
            f"{s.cpu_percent:5.1f}%  load {s.load_avg[0]:.2f} {s.load_avg[1]:.2f}",
            s.cpu_percent,
            s.cpu_percent / 100,
        )
        mem, sw = s.memory, s.swap
        swap = f"swap {sw.percent:.0f}%" if sw.total_bytes else "no swap"
        self._set(
            "mem",
            f"{fmt_bytes(mem.used_bytes)}/{fmt_bytes(mem.total_bytes)} {swap}",
            mem.percent,
            mem.percent / 100,
        )
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
        if text != self._cores_text:  # an update repaints, and a repaint redraws its ancestors too
            self._cores_text = text
            self._cores.update(text, layout=False)

    def _set(self, key: str, text: str, value: float, ratio: float | None = None) -> None:
        hist = self._hist[key]
        hist.append(value)
        self._rows[key].show(text, ratio, tuple(hist))
