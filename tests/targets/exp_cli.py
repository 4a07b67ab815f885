"""Runs `perftop export|record|replay|web ARGS` for the tests, through the real CLI once it knows the
command, else through the command's own `add_*_parser`/`run_*` functions (same arguments, same code).

Usage: python exp_cli.py COMMAND ARGS...
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    from perftop import cli

    command = sys.argv[1]
    if command in getattr(cli, "_COMMANDS", {}):
        os.execv(sys.executable, [sys.executable, "-m", "perftop", *sys.argv[1:]])
    import importlib

    module_name, add, run = {
        "export": ("perftop.commands.export", "add_export_parser", "run_export"),
        "record": ("perftop.commands.record", "add_record_parser", "run_record"),
        "replay": ("perftop.commands.replay", "add_replay_parser", "run_replay"),
        "web": ("perftop.commands.web", "add_web_parser", "run_web"),
    }[command]
    module = importlib.import_module(module_name)
    parser = cli._Parser(prog="perftop")
    sub = parser.add_subparsers(dest="command", parser_class=cli._Parser)
    getattr(module, add)(sub)
    try:
        args: argparse.Namespace = parser.parse_args(sys.argv[1:])
    except cli.UsageError as exc:
        sys.stderr.write(f"perftop: {exc}\n")
        return 2
    code: int = getattr(module, run)(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
