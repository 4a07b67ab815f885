"""`perftop`, `perftop --pid PID` and `perftop attach PID`: the TUI, on the process list or attached."""

from __future__ import annotations

from perftop.commands._args import add_tui_options, open_tui, parse_pid

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


def add_attach_parser(sub: Any) -> None:
    """Register `perftop attach PID` on the CLI's subparsers (the root parser holds `--pid`'s form)."""
    attach = sub.add_parser("attach", help="the TUI attached to PID", description="The TUI attached to PID.")
    attach.add_argument("attach_pid", type=parse_pid, metavar="PID")
    add_tui_options(attach)


def run_attach(args: argparse.Namespace) -> int:
    """`perftop attach PID`."""
    return open_tui(args.attach_pid, args)


def run_tui(args: argparse.Namespace) -> int:
    """`perftop` (the process list) or `perftop --pid PID`."""
    return open_tui(args.pid, args)
