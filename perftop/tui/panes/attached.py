"""The attached view: tabs for one process, and the keys that run actions inside it."""

from __future__ import annotations

from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import TabbedContent

from perftop.tui.panes.actions import ActionsPane


class AttachedView(Vertical):
    """Owns the action keys, so that they work from every tab; results show in the Actions tab."""

    BINDINGS = [
        Binding("p", "run('profile')", "Profile"),
        Binding("P", "run('profile_exact')", "Exact profile", show=False),
        Binding("m", "run('memory')", "Memory"),
        Binding("M", "run('memory_stop')", "Stop tracing", show=False),
        Binding("g", "run('gc')", "Force GC"),
        Binding("t", "run('threads')", "Threads"),
    ]

    def action_run(self, name: str) -> None:
        """Start an action in the attached process and show the Actions tab."""
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
            self.query_one(TabbedContent).active = "tab-actions"
