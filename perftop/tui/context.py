"""What a pane may ask of the app it runs in, without importing the app (the app imports the panes).

Why: panes sit below the app; they reach it through this protocol (and answers come back as messages,
`AgentReply`), so `tui/app.py` -> panes stays one-way.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from textual.widget import Widget

from perftop.tui.widgets.target import ActionTarget


@runtime_checkable
class AgentHost(Protocol):
    """An app attached to a process whose agent a pane can call (PerftopApp, and ReplayApp refusing)."""

    attached: int | None
    """The attached PID, None on the process list."""
    action_target: ActionTarget | None
    """Where the next action runs (a worker, or all of them), None for the attached process itself."""

    def refuses(self, what: str) -> bool:
        """True, with a notice saying why, where `what` changes the target and the session is read-only."""
        ...

    def agent_call(
        self, method: str, params: dict[str, Any], reply_to: Widget, timeout: float = 30.0
    ) -> bool:
        """Send one request to the attached agent; the answer is posted to `reply_to` as an AgentReply."""
        ...


def agent_host(app: object) -> AgentHost | None:
    """`app` as an AgentHost, or None where it is another kind of app (a test harness)."""
    return app if isinstance(app, AgentHost) else None
