"""Where an action runs when attached to a parent with workers (chosen in `screens.target_picker`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActionTarget:
    """The process an action runs in; `children`: also (and only) in its workers, merged."""

    pid: int
    children: bool
