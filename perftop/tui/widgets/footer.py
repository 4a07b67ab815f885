"""The footer of key bindings: one widget that draws every key on its line.

Textual's Footer is a container of a widget per key (a dozen here, each styled and laid out) that it
removes and makes again at each change of the screen's bindings, several times before the first frame and
at each change of focus. This footer reads the same bindings (`Screen.active_bindings`, the keys shown,
one per action, the command palette's on the right) and only redraws its line when they change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.cells import cell_len
from textual import events
from textual.content import Content
from textual.screen import Screen
from textual.style import Style
from textual.widget import Widget


@dataclass(frozen=True)
class _Key:
    """One key as the footer shows it."""

    key: str
    display: str
    description: str
    enabled: bool


class KeysFooter(Widget, can_focus=False):
    """The keys that apply where the focus is; a click on one presses it."""

    ALLOW_SELECT = False
    COMPONENT_CLASSES = {
        "keys-footer--key",
        "keys-footer--description",
        "keys-footer--hover",
        "keys-footer--separator",
    }
    DEFAULT_CSS = """
    KeysFooter {
        dock: bottom;
        height: 1;
        color: $footer-foreground;
        background: $footer-background;
        text-wrap: nowrap;
    }
    KeysFooter > .keys-footer--key {
        color: $footer-key-foreground;
        background: $footer-key-background;
        text-style: bold;
    }
    KeysFooter > .keys-footer--description {
        color: $footer-description-foreground;
        background: $footer-description-background;
    }
    KeysFooter > .keys-footer--hover { background: $block-hover-background; }
    KeysFooter > .keys-footer--separator { color: $foreground 20%; }
    """

    def __init__(self) -> None:
        super().__init__()
        self._keys: tuple[_Key, ...] = ()
        self._palette: _Key | None = None
        self._spans: list[tuple[int, int, _Key]] = []
        """Where each key is drawn: (first column, end column, key), for clicks."""
        self._hover: str | None = None

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen: Screen[Any]) -> None:
        if not self.is_attached or screen is not self.screen:
            return
        keys: list[_Key] = []
        actions: set[str] = set()
        palette: _Key | None = None
        active = screen.active_bindings
        for _node, binding, enabled, _tooltip in active.values():
            if not binding.show or binding.action in actions:
                continue
            actions.add(binding.action)
            keys.append(_Key(binding.key, self.app.get_key_display(binding), binding.description, enabled))
        if self.app.ENABLE_COMMAND_PALETTE and (found := active.get(self.app.COMMAND_PALETTE_BINDING)):
            _node, binding, enabled, _tooltip = found
            palette = _Key(binding.key, self.app.get_key_display(binding), binding.description, enabled)
        if (tuple(keys), palette) != (self._keys, self._palette):
            self._keys, self._palette = tuple(keys), palette
            self.refresh()

    def render(self) -> Content:
        style = self.get_visual_style
        key_style, text_style = style("keys-footer--key"), style("keys-footer--description")
        hover = style("keys-footer--hover", partial=True)
        parts: list[tuple[str, Style]] = []
        spans: list[tuple[int, int, _Key]] = []
        x = 0

        def add(k: _Key, key_text: str, text: str) -> None:
            nonlocal x
            extra = Style(dim=not k.enabled) + (hover if k.key == self._hover else Style())
            parts.append((key_text, key_style + extra))
            parts.append((text, text_style + extra))
            width = cell_len(key_text) + cell_len(text)
            spans.append((x, x + width, k))
            x += width

        for k in self._keys:
            add(k, f" {k.display} ", f"{k.description} " if k.description else "")
        keys = Content.assemble(*parts)
        palette = self._palette
        if palette is None:
            self._spans = spans
            return keys
        # The command palette's key on the right, as Textual's footer docks it; the keys are cut before it.
        room = self.size.width - (1 + cell_len(palette.display) + cell_len(palette.description) + 2)
        keys = keys.truncate(room, pad=True)
        spans = [(start, min(end, room), k) for start, end, k in spans if start < room]
        parts = [("▏", style("keys-footer--separator"))]
        x = room + 1
        add(palette, palette.display, f" {palette.description} ")
        self._spans = spans
        return Content.assemble(keys, *parts)

    def _key_at(self, x: int) -> _Key | None:
        return next((k for start, end, k in self._spans if start <= x < end), None)

    def on_mouse_down(self, event: events.MouseDown) -> None:
        key = self._key_at(event.x)
        if key is None:
            return
        if key.enabled:
            self.app.simulate_key(key.key)
        else:
            self.app.bell()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        key = self._key_at(event.x)
        hover = None if key is None else key.key
        if hover != self._hover:
            self._hover = hover
            self.refresh()

    def on_leave(self) -> None:
        if self._hover is not None:
            self._hover = None
            self.refresh()
