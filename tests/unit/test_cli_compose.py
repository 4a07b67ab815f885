"""The CLI's composition: a command line parses the same with only its command's parser built as with
every command's, and the TUI imports no other command (nor what they need) on its way to the first frame."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from perftop import cli
from perftop.commands._args import UsageError

COMMAND_LINES = [
    [],
    ["--pid", "1", "--interval", "0.5", "--theme", "nord"],
    ["--read-only", "--socket-dir", "/tmp/x"],
    ["attach", "1", "--interval", "2"],
    ["snapshot", "--pid", "1", "--json", "--window", "10", "--no-children"],
    ["--interval", "2", "snapshot"],
    ["action", "--pid", "1", "profile", "--seconds", "2", "--hz", "50", "-o", "x.folded", "--worker", "2"],
    ["run", "--name", "app", "--", "python", "-c", "pass"],
    ["demo", "--no-tui", "--threads", "2"],
    ["inject", "1", "--timeout", "3"],
    ["export", "--listen", "127.0.0.1:9000", "--pid", "1", "--pid", "2"],
    ["record", "--pid", "1", "-o", "rec.db", "--duration", "5"],
    ["replay", "rec.db", "--theme", "nord"],
    ["web", "--listen", "127.0.0.1:8001", "--", "--pid", "1"],
]

REJECTED = [
    ["bogus"],
    ["--pid", "abc"],
    ["--interval"],
    ["snapshot", "--pid", "0"],
    ["action", "threads"],
    ["action", "--pid", "1", "nothing"],
    ["record", "--pid", "1"],
    ["--pid", "1", "snapshot", "--bogus"],
]


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=lambda a: " ".join(a) or "(tui)")
def test_the_chosen_command_parses_as_with_every_parser(argv: list[str]) -> None:
    full = cli.build_parser().parse_args(argv)
    needed = cli._needed(argv)
    assert needed == (() if full.command is None else (full.command,))
    assert vars(cli.build_parser(needed).parse_args(argv)) == vars(full)


@pytest.mark.parametrize("argv", REJECTED, ids=" ".join)
def test_a_rejected_line_is_rejected_with_the_full_parser_message(argv: list[str]) -> None:
    with pytest.raises(UsageError) as full:
        cli.build_parser().parse_args(argv)
    with pytest.raises(UsageError) as lazy:
        cli.build_parser(cli._needed(argv)).parse_args(argv)
    assert str(lazy.value) == str(full.value)


@pytest.mark.parametrize("argv", [["--help"], ["-h", "snapshot"], ["--he"]])
def test_the_root_help_builds_every_command(argv: list[str]) -> None:
    assert cli._needed(argv) is None


@pytest.mark.parametrize("argv", [[], ["--pid", "{pid}"]], ids=["tui", "tui --pid"])
def test_the_tui_imports_no_other_command(argv: list[str]) -> None:
    """Up to the app's run(): only `commands.tui` and `_args` among the commands, and none of the heavy
    libraries other commands use."""
    code = textwrap.dedent(
        """
        import sys
        import perftop.tui.app

        perftop.tui.app.PerftopApp.run = lambda self, *a, **k: None
        from perftop.cli import main

        main(sys.argv[1:])
        print(" ".join(sorted(sys.modules)))
        """
    )
    args = [a.replace("{pid}", str(os.getpid())) for a in argv]
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, check=True
    )
    modules = set(result.stdout.split())
    commands = {m for m in modules if m.startswith("perftop.commands")}
    assert commands == {"perftop.commands", "perftop.commands._args", "perftop.commands.tui"}
    heavy = {"sqlalchemy", "prometheus_client", "aiohttp", "textual_serve", "google.protobuf"}
    assert not heavy & modules
