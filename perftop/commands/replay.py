"""`perftop replay FILE`: open a recording made by `perftop record` in the TUI."""

from __future__ import annotations

import argparse
from typing import Any

from perftop.commands._args import fail
from perftop.recording.errors import RecordingError
from perftop.recording.store import RecordingReader


def add_replay_parser(sub: Any) -> None:
    """Register `perftop replay` on the CLI's subparsers."""
    p = sub.add_parser(
        "replay",
        help="open a recording made by `perftop record` in the TUI",
        description="Open a recording in the TUI: every pane as recorded. Keys: left/right step one "
        "interval, [ and ] ten, home/end, space play/pause, +/- the playback pace.",
    )
    p.add_argument("file", metavar="FILE", help="the recording")
    p.add_argument("--theme", metavar="NAME", help="theme name or path to a theme file")


def run_replay(args: argparse.Namespace) -> int:
    """`perftop replay FILE`: a foreign, truncated or unreadable file is one `perftop: ` line, exit 2."""
    from perftop.tui.themes import ThemeError, resolve_theme

    try:
        reader = RecordingReader(args.file)
    except RecordingError as exc:
        return fail(str(exc), 2)
    try:
        try:
            theme, themes = resolve_theme(args.theme)
        except ThemeError as exc:
            return fail(str(exc), 2)
        from perftop.tui.replay import ReplayApp

        app = ReplayApp(reader, theme_name=theme.name, themes=themes)
        app.run()
        return app.return_code or 0
    finally:
        reader.close()
