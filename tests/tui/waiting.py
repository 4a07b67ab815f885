"""Wait on a predicate while the app runs, instead of sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.pilot import Pilot

from tests.helpers import describe, timeout_message


async def wait_for(
    pilot: Pilot[object], predicate: Callable[[], object], timeout: float = 10.0, what: str | None = None
) -> None:
    """Let the app run until `predicate()` is true; at the deadline, fail as `tests.helpers.wait_for` does
    (what was awaited, else the predicate's source, and the last value seen)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(timeout_message(timeout, what or describe(predicate), value))
        await pilot.pause(0.02)
