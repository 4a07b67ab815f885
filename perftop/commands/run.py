"""`perftop run [--name NAME] -- CMD ARGS...`: exec a program with the agent started in it.

Its start-up cost is added to the program's, so this module imports neither argparse nor typing at
module level: `perftop.cli`'s fast path calls `exec_program` without building a parser."""

from __future__ import annotations

import os

from perftop.commands._args import EXIT_FAILURE, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


def add_run_parser(sub: Any) -> None:
    """Register `perftop run` on the CLI's subparsers (for `perftop run --help`; cli parses a run itself)."""
    import argparse

    run = sub.add_parser(
        "run",
        help="run a Python program with the agent started, no code change",
        description="Run CMD with perftop's agent started in it (and in its Python children), every "
        "SQLAlchemy engine instrumented and every web request of Flask, Django, Starlette/FastAPI, Bottle, "
        "Pyramid or Falcon timed by route. Exit code, signals and stdio pass through. PERFTOP=0 disables.",
    )
    run.add_argument("--name", help="the app name the agent reports")
    run.add_argument("--slow-ms", type=float, help="slow-query threshold (default 100, or $PERFTOP_SLOW_MS)")
    run.add_argument(
        "--no-frameworks",
        action="store_true",
        help="do not time web requests by route nor Celery tasks by name (also PERFTOP_FRAMEWORKS=0)",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")


def run_program(args: argparse.Namespace) -> int:
    """`perftop run`, parsed by argparse."""
    if args.no_frameworks:
        os.environ["PERFTOP_FRAMEWORKS"] = "0"
    return exec_program(args.cmd, args.name, args.slow_ms)


def exec_program(cmd: list[str], name: str | None, slow_ms: float | None) -> int:
    """Replace this process with `cmd`, the agent set to start in it; a command that cannot run is exit 2."""
    from perftop.launch.runner import exec_with_agent

    try:
        exec_with_agent(cmd, name, slow_ms)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot run {cmd[-1] if cmd else ''}: {exc.strerror}") from None
    return EXIT_FAILURE  # exec does not return
