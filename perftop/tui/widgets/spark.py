"""A one-line sparkline drawn with block characters: one cell per sample, the newest on the right.

Textual's `Sparkline` buckets and blends colours per cell on every render (~1.5 ms each here); this costs a
string join.
"""

from __future__ import annotations

from collections.abc import Sequence

from textual.reactive import reactive
from textual.widget import Widget

_LEVELS = "▁▂▃▄▅▆▇█"


def spark_text(values: Sequence[float], width: int) -> str:
    """The last `width` values as block characters, scaled to their maximum."""
    shown = values[-width:] if width > 0 else ()
    top = max(shown, default=0.0)
    if top <= 0:
        return _LEVELS[0] * len(shown)
    return "".join(_LEVELS[min(7, int(v / top * 7.999))] for v in shown)


class TextSparkline(Widget):
    """The history of one value."""

    DEFAULT_CSS = "TextSparkline { height: 1; color: $accent; }"

    data: reactive[tuple[float, ...]] = reactive(tuple)
    """The samples, oldest first."""

    def render(self) -> str:
        return spark_text(self.data, self.size.width).rjust(self.size.width)
