"""A one-line usage bar: usage against a limit, with warning and error states that read without colour."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

WARN_AT = 0.80
ERROR_AT = 0.95
_STATES = ("-unknown", "-warning", "-error")


def bar_state(ratio: float | None) -> str:
    """The state class of a bar at `ratio`: "-unknown", "-warning", "-error", or "" for none."""
    if ratio is None:
        return "-unknown"
    return "-error" if ratio >= ERROR_AT else "-warning" if ratio >= WARN_AT else ""


def bar_text(ratio: float | None, width: int) -> str:
    """A bar `width` cells wide: the filled share, then the percentage (with its `!` marks)."""
    cells = max(width - 7, 2)
    if ratio is None:
        return "·" * cells + "    -  "
    filled = round(min(max(ratio, 0.0), 1.0) * cells)
    mark = "!!" if ratio >= ERROR_AT else "!" if ratio >= WARN_AT else ""
    pct = f"{ratio * 100:3.0f}%{mark}"
    return "█" * filled + "░" * (cells - filled) + " " + pct.ljust(6)


class UsageBar(Widget):
    """`████████░░░░ 67%`; above 80% it turns to the warning colour and ends in `!`, above 95% `!!`."""

    DEFAULT_CSS = """
    UsageBar { height: 1; width: 1fr; min-width: 10; color: $success; }
    UsageBar.-warning { color: $warning; text-style: bold; }
    UsageBar.-error { color: $error; text-style: bold reverse; }
    UsageBar.-unknown { color: $text-muted; }
    """

    ratio: reactive[float | None] = reactive(None)
    """Usage as a share of the limit, or None where the limit is unlimited or the usage unknown."""

    def __init__(self, ratio: float | None = None, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.set_reactive(UsageBar.ratio, ratio)
        self._state = bar_state(ratio)
        """The state class shown ("" for none)."""
        # Its class is set before the bar is first styled: set once mounted (the watcher's first call),
        # it restyled every bar right after its first styling, twenty of them with a process's limits.
        if self._state:
            self.add_class(self._state, update=False)

    def watch_ratio(self, ratio: float | None) -> None:
        """One style update when the state changes (each class changed on its own restyled the bar)."""
        state = bar_state(ratio)
        if state == self._state:
            return
        self._state = state
        self.remove_class(*_STATES, update=not state)
        if state:
            self.add_class(state)

    def render(self) -> Text:
        return Text(bar_text(self.ratio, self.size.width))
