"""Memory target: leaks objects from one known line on command.

Commands: leak {"count", "size"} (append `count` bytearrays of `size` bytes to a global list, from the line
marked LEAK-LINE), tracing (whether tracemalloc is tracing in this process).
"""

from __future__ import annotations

import tracemalloc
from typing import Any

from act_harness import Harness

LEAKED: list[bytearray] = []


def leak(args: dict[str, Any]) -> int:
    for _ in range(int(args.get("count", 1000))):
        LEAKED.append(bytearray(int(args.get("size", 1024))))  # LEAK-LINE
    return len(LEAKED)


def tracing(args: dict[str, Any]) -> bool:
    return tracemalloc.is_tracing()


def main() -> None:
    Harness({"leak": leak, "tracing": tracing}).serve()


if __name__ == "__main__":
    main()
