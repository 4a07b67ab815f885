"""Argument types shared by the commands' parsers (one definition for the CLI, export and web)."""

from __future__ import annotations

from collections.abc import Callable


def whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`, else a one-line argparse error."""

    def parse(text: str) -> int:
        import argparse  # only when a parser runs: `perftop run` execs without importing it

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {text}")
        return value

    return parse
