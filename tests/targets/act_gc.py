"""GC target: automatic collection is off; reference cycles are made and dropped on command.

Commands: make_cycles {"count"} (create `count` self-referencing lists and drop them), gc_state.
"""

from __future__ import annotations

import gc
from typing import Any

from act_harness import Harness


def make_cycles(args: dict[str, Any]) -> int:
    count = int(args.get("count", 1000))
    for _ in range(count):
        cycle: list[Any] = []
        cycle.append(cycle)
    del cycle
    return count


def gc_state(args: dict[str, Any]) -> dict[str, Any]:
    return {"enabled": gc.isenabled(), "count": list(gc.get_count())}


def main() -> None:
    gc.disable()
    gc.collect()
    Harness({"make_cycles": make_cycles, "gc_state": gc_state}).serve()


if __name__ == "__main__":
    main()
