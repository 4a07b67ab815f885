"""A one-line sparkline drawn with block characters: one cell per sample, the newest on the right.

Textual's `Sparkline` buckets and blends colours per cell on every render (~1.5 ms each here); this costs a
string join. The system pane's rows draw it beside their figures.
"""

from __future__ import annotations

from collections.abc import Sequence

_LEVELS = "▁▂▃▄▅▆▇█"


def spark_text(values: Sequence[float], width: int) -> str:
    """The last `width` values as block characters, scaled to their maximum."""
    shown = values[-width:] if width > 0 else ()
    top = max(shown, default=0.0)
    if top <= 0:
        return _LEVELS[0] * len(shown)
    return "".join(_LEVELS[min(7, int(v / top * 7.999))] for v in shown)
