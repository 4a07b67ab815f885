"""The footer of key bindings, rebuilt once for the changes of bindings that came before it could rebuild."""

from __future__ import annotations

from typing import Any

from textual.screen import Screen
from textual.widgets import Footer


class KeysFooter(Footer):
    """Textual's Footer rebuilds all its keys (a dozen widgets, each styled) after the next refresh for
    every change of the screen's bindings, also for several changes before that refresh: at start-up the
    screen's resume, the first focus and the focus's own second signal. Here a change that comes while a
    rebuild is already due is left to that rebuild, which reads the bindings as they are when it runs."""

    _rebuild_due = False

    def bindings_changed(self, screen: Screen[Any]) -> None:
        if self._rebuild_due:
            return
        super().bindings_changed(screen)
        # What Footer.bindings_changed checks before it schedules a rebuild.
        self._rebuild_due = self.app.app_focus and self.is_attached and screen is self.screen

    async def recompose(self) -> None:
        self._rebuild_due = False
        await super().recompose()
