"""A one-line usage bar: usage against a limit, with warning and error states that read without colour."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

WARN_AT = 0.80
ERROR_AT = 0.95


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

    def watch_ratio(self, ratio: float | None) -> None:
        self.set_class(ratio is None, "-unknown")
        self.set_class(ratio is not None and WARN_AT <= ratio < ERROR_AT, "-warning")
        self.set_class(ratio is not None and ratio >= ERROR_AT, "-error")

    def render(self) -> Text:
        width = max(self.size.width - 7, 2)
        ratio = self.ratio
        if ratio is None:
            return Text("·" * width + "    -  ")
        filled = round(min(max(ratio, 0.0), 1.0) * width)
        mark = "!!" if ratio >= ERROR_AT else "!" if ratio >= WARN_AT else ""
        pct = f"{ratio * 100:3.0f}%{mark}"
        return Text("█" * filled + "░" * (width - filled) + " " + pct.ljust(6))
