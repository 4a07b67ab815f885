"""Theme files: JSON documents with the fields of `textual.theme.Theme`, loaded from `themes/`.

Kept apart from the TUI so that the CLI can reject a bad `--theme` before any screen is drawn.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path
from typing import Any

from textual.theme import Theme

DEFAULT_THEME = "perftop-dark"


class ThemeError(ValueError):
    """A theme file is unreadable or malformed, or a theme name is unknown. One line, naming the file."""


def theme_dirs() -> list[Path]:
    """Where theme files are looked for: the user's config dir, the installed package, the source tree."""
    here = Path(__file__).resolve().parent.parent
    config = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "perftop" / "themes"
    return [p for p in (config, here / "themes", here.parent / "themes") if p.is_dir()]


_FIELDS = {f.name: f for f in dataclasses.fields(Theme)}


MAX_THEME_BYTES = 1 << 20
"""A theme is a few hundred bytes; a larger file is not one."""


def _read_small_file(path: Path) -> str:
    """The text of a regular file of at most MAX_THEME_BYTES; ThemeError otherwise (never blocks on a
    FIFO or a device)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ThemeError(f"theme file {path}: not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_THEME_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_THEME_BYTES:
        raise ThemeError(f"theme file {path}: larger than {MAX_THEME_BYTES} bytes, not a theme")
    return data.decode("utf-8")


def load_theme_file(path: Path) -> Theme:
    """One theme from a JSON file; ThemeError names the file and what is wrong."""
    try:
        data: Any = json.loads(_read_small_file(path))
    except OSError as exc:
        raise ThemeError(f"theme file {path}: cannot read it ({exc.strerror})") from None
    except ThemeError:
        raise
    except ValueError as exc:
        raise ThemeError(f"theme file {path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ThemeError(f"theme file {path}: not a theme (JSON nested too deeply)") from None
    if not isinstance(data, dict):
        raise ThemeError(f"theme file {path}: must hold a JSON object")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ThemeError(f"theme file {path}: unknown keys {', '.join(unknown)}")
    for key in ("name", "primary"):
        if not isinstance(data.get(key), str):
            raise ThemeError(f"theme file {path}: {key!r} must be a string")
    try:
        theme = Theme(**data)
        theme.to_color_system().generate()
    except Exception as exc:
        raise ThemeError(f"theme file {path}: {exc}") from None
    return theme


def load_themes() -> dict[str, Theme]:
    """Every theme found in `theme_dirs()`, by name; earlier directories win."""
    themes: dict[str, Theme] = {}
    for folder in reversed(theme_dirs()):
        for path in sorted(folder.glob("*.json")):
            theme = load_theme_file(path)
            themes[theme.name] = theme
    return themes


def resolve_theme(name_or_path: str | None) -> tuple[Theme, dict[str, Theme]]:
    """The theme a `--theme` value names (a name, or a path to a file), and all known themes."""
    themes = load_themes()
    wanted = name_or_path or DEFAULT_THEME
    if wanted.endswith(".json") or os.sep in wanted:
        theme = load_theme_file(Path(wanted))
        themes[theme.name] = theme
        return theme, themes
    if wanted not in themes:
        known = ", ".join(sorted(themes))
        raise ThemeError(f"unknown theme {wanted!r} (known: {known})")
    return themes[wanted], themes
