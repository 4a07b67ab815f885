"""Where an action runs when attached to a parent with workers: all of them, one, or the parent alone."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label

from perftop.tui.widgets.target import ActionTarget


class TargetPicker(ModalScreen[ActionTarget | None]):
    """Enter or `a`: every worker (the default); `w`: the worker under the table's cursor; `m`: the
    parent itself. Escape cancels (dismissed with None)."""

    DEFAULT_CSS = """
    TargetPicker { align: center middle; }
    TargetPicker > Vertical {
        width: 72; height: auto; border: thick $accent; background: $surface; padding: 1 2;
    }
    TargetPicker .keys { color: $text-muted; margin-top: 1; }
    """

    BINDINGS = [
        Binding("a,enter", "pick('all')", "All workers"),
        Binding("w", "pick('worker')", "This worker"),
        Binding("m", "pick('master')", "The parent itself"),
        Binding("escape", "pick('none')", "Cancel"),
    ]

    def __init__(self, action: str, parent: int, workers: int, worker: int | None) -> None:
        super().__init__()
        self.verb = action
        self.parent_pid = parent
        self.n_workers = workers
        self.worker_pid = worker

    def compose(self) -> ComposeResult:
        worker = ""
        if self.worker_pid is not None:
            worker = f"\n  w        worker {self.worker_pid} (the table's cursor)"
        with Vertical():
            yield Label(
                f"Run {self.verb} in:\n\n"
                f"  a Enter  all {self.n_workers} workers, at once, merged (each worker's own kept too)"
                f"{worker}\n  m        PID {self.parent_pid} itself",
                markup=False,
            )
            yield Label("Escape: cancel", classes="keys")

    def action_pick(self, choice: str) -> None:
        if choice == "all":
            self.dismiss(ActionTarget(self.parent_pid, True))
        elif choice == "worker" and self.worker_pid is not None:
            self.dismiss(ActionTarget(self.worker_pid, False))
        elif choice == "master":
            self.dismiss(ActionTarget(self.parent_pid, False))
        elif choice == "none":
            self.dismiss(None)
