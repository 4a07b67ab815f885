"""Where a memory allocation site was called from (the memory result's traceback)."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class TracebackView(ModalScreen[None]):
    """Where a memory allocation site was called from, outermost first."""

    DEFAULT_CSS = """
    TracebackView { align: center middle; }
    TracebackView > VerticalScroll {
        width: 90%; height: auto; max-height: 80%; border: thick $accent; background: $surface; padding: 0 1;
    }
    """

    BINDINGS = [Binding("escape,q,enter", "close", "Close")]

    def __init__(self, site: dict[str, Any]) -> None:
        super().__init__()
        self.site = site

    def compose(self) -> ComposeResult:
        frames = self.site.get("traceback") or [
            {"file": self.site.get("file"), "line": self.site.get("line")}
        ]
        lines = [
            f"{self.site.get('size_diff_bytes', 0):+,} bytes, {self.site.get('count_diff', 0):+,} objects"
            " since the previous snapshot, allocated at:",
            "",
            *(f"  {f.get('file')}:{f.get('line')}" for f in frames),
        ]
        with VerticalScroll():
            yield Static("\n".join(lines), id="traceback", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
