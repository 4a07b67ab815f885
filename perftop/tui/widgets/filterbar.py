"""The `/` filter field of a pane: hidden until opened; Enter keeps the filter, Escape clears it."""

from __future__ import annotations

from textual.widget import Widget
from textual.widgets import Input


class FilterBar(Input):
    """Typing posts `Input.Changed` to the pane as usual; focus goes back to `back_to` when done."""

    DEFAULT_CSS = """
    FilterBar { display: none; }
    FilterBar.-open { display: block; }
    """

    def __init__(self, placeholder: str, back_to: Widget) -> None:
        # Compact: one line, no border. A plain Input's focus border (`Input:focus`, which outranks a
        # type selector) drew the one-line field as its two border rows, hiding what is typed.
        super().__init__(placeholder=placeholder, compact=True)
        self.back_to = back_to

    def open(self) -> None:
        """Show the field and type into it."""
        self.add_class("-open")
        self.focus()

    def clear(self) -> None:
        """Empty and hide the field and return to `back_to` (the pane resets its filter on Changed)."""
        self.value = ""
        self.remove_class("-open")
        self.back_to.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter keeps the filter (an empty one closes the field) and returns to `back_to`."""
        event.stop()
        self.back_to.focus()
        if not event.value:
            self.remove_class("-open")
