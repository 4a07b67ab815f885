"""`perftop inject PID`: start an agent inside a running CPython process that has none."""

from __future__ import annotations

import sys

from perftop.commands._args import EXIT_OK, Failure, UsageError, parse_pid, seconds

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


def add_inject_parser(sub: Any) -> None:
    """Register `perftop inject` on the CLI's subparsers."""
    inject = sub.add_parser(
        "inject",
        help="start an agent inside a running Python process",
        description="Start perftop's agent inside a running CPython process that has none (pyinjector, "
        "else gdb, on 3.10-3.13, each only after a preflight on a throwaway process of the same "
        "interpreter; sys.remote_exec on 3.14+). The process keeps running; nothing needs installing in it.",
    )
    inject.add_argument("inject_pid", type=parse_pid, metavar="PID")
    inject.add_argument("--timeout", type=seconds, default=10.0, help="give up after S seconds (default 10)")
    inject.add_argument("--socket-dir", metavar="DIR", help="where the agent's socket goes")


def run_inject(args: argparse.Namespace) -> int:
    """`perftop inject PID`: prints the new agent's socket; a PID that cannot take one is exit 2."""
    from perftop.launch.inject import InjectError, inject

    try:
        path = inject(args.inject_pid, args.socket_dir, timeout=args.timeout)
    except InjectError as exc:
        raise (UsageError if exc.bad_input else Failure)(str(exc)) from None
    sys.stdout.write(f"agent started in PID {args.inject_pid}: {path}\n")
    return EXIT_OK
