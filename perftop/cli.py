"""The `perftop` command: composes the commands of `perftop.commands`, parses, dispatches, and turns their
errors into one line on stderr starting `perftop: ` with exit code 2 for bad usage or input and 1 for a
runtime failure, never a traceback (the CLI contract, ../shared/CLI.md).

A command's module is imported only when it is the chosen command: `perftop` (the TUI) loads none of
`export`, `record`, `web`... on its way to the first frame. Only `perftop --help`, which lists every
command, and a command line argparse rejects build every command's parser.
"""

from __future__ import annotations

import os
import sys

from perftop._version import __version__
from perftop.commands._args import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Failure,
    UsageError,
    add_tui_options,
    fail,
    parse_pid,
)

# `perftop run` execs the program as soon as it can: argparse (with re, 13 ms), json and typing are
# imported only where they are needed, never on its way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Collection, Sequence
    from typing import NoReturn

_COMMANDS: dict[str, tuple[str, str, str]] = {
    "attach": ("perftop.commands.tui", "add_attach_parser", "run_attach"),
    "snapshot": ("perftop.commands.snapshot", "add_snapshot_parser", "run_snapshot"),
    "action": ("perftop.commands.action", "add_action_parser", "run_action"),
    "run": ("perftop.commands.run", "add_run_parser", "run_program"),
    "demo": ("perftop.commands.demo", "add_demo_parser", "run_demo"),
    "inject": ("perftop.commands.inject", "add_inject_parser", "run_inject"),
    "export": ("perftop.commands.export", "add_export_parser", "run_export"),
    "record": ("perftop.commands.record", "add_record_parser", "run_record"),
    "replay": ("perftop.commands.replay", "add_replay_parser", "run_replay"),
    "web": ("perftop.commands.web", "add_web_parser", "run_web"),
}
"""Each command: its module, the function that registers its sub-parser, the one that runs it. In the
order `perftop --help` lists them."""

_TUI = ("perftop.commands.tui", "run_tui")
"""What runs without a command: the TUI."""


class _EveryCommand(Exception):
    """The probe met the root's --help: the listing needs every command's parser."""


def _parser_class() -> type[argparse.ArgumentParser]:
    """argparse's parser with one-line errors (`perftop: ...`, exit 2) instead of usage dumps."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            raise UsageError(f"{message} (see '{self.prog} --help')")

    return _Parser


def build_parser(full: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The `perftop` parser. `full` names the commands whose own parser is built (their modules imported);
    the others are placeholders that only name the command. None: every command, as `--help` lists them."""
    return _compose(full, probe=False)


def _compose(full: Collection[str] | None, probe: bool) -> argparse.ArgumentParser:
    """The root parser and the commands; as a probe, its --help raises `_EveryCommand` instead of printing."""
    import argparse
    import importlib

    parser_class = _parser_class()
    parser = parser_class(
        prog="perftop",
        description="A live performance monitor for Python services.",
        epilog="Run 'perftop COMMAND --help' for a command's options.",
        add_help=not probe,
    )
    if probe:

        class _Escalate(argparse.Action):
            def __call__(self, *_: object, **__: object) -> NoReturn:
                raise _EveryCommand

        parser.add_argument("-h", "--help", action=_Escalate, nargs=0)
    parser.add_argument("--version", action="version", version=f"perftop {__version__}")
    parser.add_argument("--pid", type=parse_pid, help="attach to this process")
    # `perftop web` runs sessions with this: keys that change the target are refused.
    parser.add_argument("--read-only", action="store_true", help=argparse.SUPPRESS)
    add_tui_options(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=parser_class)
    for name, (module, add, _) in _COMMANDS.items():
        if full is None or name in full:
            getattr(importlib.import_module(module), add)(sub)
        else:
            sub.add_parser(name, add_help=False)
    return parser


def _needed(argv: list[str]) -> tuple[str, ...] | None:
    """The commands whose parser `argv` needs: the chosen one, none for the TUI, or None (every command)
    for the root's --help and for a command line the parser rejects, so that it is rejected in full."""
    try:
        args, _ = _compose((), probe=True).parse_known_args(argv)
    except (UsageError, _EveryCommand):
        return None
    return () if args.command is None else (args.command,)


def _handler(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command's handler, its module imported now."""
    import importlib

    run: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
    return run


def _fast_run(argv: list[str]) -> int:
    """`perftop run` without building the whole parser: its start-up cost is added to the program's."""
    from perftop.commands.run import exec_program

    name: str | None = None
    slow_ms: float | None = None
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        option, _, value = argv[i].partition("=")
        if option == "--no-frameworks" and not value:
            os.environ["PERFTOP_FRAMEWORKS"] = "0"
            i += 1
            continue
        if option not in ("--name", "--slow-ms"):
            raise UsageError(f"unrecognized arguments: {argv[i]} (see 'perftop run --help')")
        if not value:
            i += 1
            if i >= len(argv):
                raise UsageError(f"argument {option}: expected one argument")
            value = argv[i]
        if option == "--name":
            name = value
        else:
            try:
                slow_ms = float(value)
            except ValueError:
                raise UsageError(f"argument --slow-ms: invalid float value: {value!r}") from None
        i += 1
    return exec_program(argv[i:], name, slow_ms)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `perftop` script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["run"] and not {"-h", "--help"} & set(
            argv[1 : argv.index("--") if "--" in argv else None]
        ):
            return _fast_run(argv[1:])
        args = build_parser(_needed(argv)).parse_args(argv)
        if args.command is None:
            return _handler(*_TUI)(args)
        module, _, run = _COMMANDS[args.command]
        return _handler(module, run)(args)
    except UsageError as exc:
        return fail(str(exc), EXIT_USAGE)
    except Failure as exc:
        return fail(str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
