"""`perftop snapshot`: sample the host (and a process) over --interval, print one report, exit."""

from __future__ import annotations

import sys

from perftop.commands._args import EXIT_OK, UsageError, add_common_options, parse_pid, seconds

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


def add_snapshot_parser(sub: Any) -> None:
    """Register `perftop snapshot` on the CLI's subparsers."""
    snap = sub.add_parser(
        "snapshot",
        help="one report as JSON or text, then exit",
        description="Sample the host (and a process) over --interval, print one report, exit.",
    )
    snap.add_argument("--pid", type=parse_pid, dest="snap_pid", metavar="PID")
    add_common_options(snap)
    snap.add_argument("--window", type=seconds, metavar="S", help="timings window (default: since start)")
    snap.add_argument("--json", action="store_true", help="print the JSON document of CLI.md")
    snap.add_argument("--no-children", action="store_true", help="do not merge the agents of child processes")


def run_snapshot(args: argparse.Namespace) -> int:
    """`perftop snapshot`: the report as text, or as the JSON document of the CLI contract
    (../shared/CLI.md) with --json."""
    from perftop.collectors.errors import CollectorError
    from perftop.export.snapshot import take_snapshot
    from perftop.render.snapshot import snapshot_json, snapshot_text
    from perftop.render.units import safe_json, safe_text

    try:
        snap = take_snapshot(
            args.snap_pid, args.interval, args.window, args.socket_dir, children=not args.no_children
        )
    except CollectorError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        sys.stdout.write(safe_json(snapshot_json(snap)) + "\n")
    else:
        sys.stdout.write(safe_text(snapshot_text(snap)) + "\n")
    return EXIT_OK
