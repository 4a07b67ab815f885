"""Human-readable numbers: bytes, rates, durations, counts; and text made safe for a terminal. Shared by
the TUI and the text reports."""

from __future__ import annotations

import json
import math
import re
from typing import Any

_CONTROL_CODES = (*range(0x20), 0x7F, *range(0x80, 0xA0))
_ESCAPES = {c: f"\\x{c:02x}" for c in _CONTROL_CODES}
"""Every C0 and C1 control character and DEL, as the visible escape Python's repr() uses (ESC -> `\\x1b`)."""
_ESCAPES_BUT_LAYOUT = {c: e for c, e in _ESCAPES.items() if c not in (0x09, 0x0A)}


def safe_text(text: object, newlines: bool = True) -> str:
    """`text` with its control characters shown as escapes, for printing to a terminal.

    Names, paths, SQL and stacks come from the monitored app: printed raw, an ESC or a C1 byte in them
    would drive the terminal (set its title, write the clipboard with OSC 52, clear the screen). With
    `newlines`, line feeds and tabs stay (a report's lines, indented SQL); otherwise they are escaped too.
    """
    return str(text).translate(_ESCAPES_BUT_LAYOUT if newlines else _ESCAPES)


def safe_json(doc: Any, indent: int | None = 2) -> str:
    """`doc` as JSON with no raw control byte: json.dumps escapes C0 and (ASCII only) C1 characters; DEL,
    which it leaves raw, becomes `\\u007f`. The document parses back to the same data."""
    return json.dumps(doc, indent=indent, ensure_ascii=True).replace("\x7f", "\\u007f")


_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def fmt_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in _BYTE_UNITS:
        if abs(value) < 1024 or unit == _BYTE_UNITS[-1]:
            if unit == "B":
                return f"{value:.0f} B"
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def fmt_rate(n: float | None) -> str:
    """Bytes per second: 1536 -> '1.5 KiB/s'."""
    return "-" if n is None else fmt_bytes(n) + "/s"


def fmt_ms(ms: float | None) -> str:
    """A duration in milliseconds, to three significant figures, in the unit that reads best."""
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "-"
    if ms < 0.001:
        return f"{ms * 1e6:.0f}ns"
    if ms < 1:
        return f"{ms * 1000:.3g}µs"
    if ms < 1000:
        return f"{ms:.3g}ms"
    return f"{ms / 1000:.3g}s"


def fmt_count(n: float | None) -> str:
    """12345 -> '12.3k'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("", "k", "M", "G"):
        if abs(value) < 1000:
            return f"{value:.0f}{unit}" if unit == "" or value >= 100 else f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.1f}T"


def fmt_duration(seconds: float | None) -> str:
    """An uptime: 93784 -> '1d 2h03m'."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{s}s"


def fmt_limit(value: int | None, unit: str) -> str:
    """A limit value: None is 'unlimited'; bytes are humanised."""
    if value is None:
        return "unlimited"
    return fmt_bytes(value) if unit == "bytes" else f"{value:,}"


_PACKAGES = re.compile(r".*/(?:site|dist)-packages/")
_STDLIB = re.compile(r".*/lib/python3\.\d+t?/")


def short_path(path: object, keep: int = 3, longer_than: int = 40) -> str:
    """A source path as py-spy shows it: an installed package from its own name on
    (`sqlalchemy/engine/cursor.py`), the standard library from its root (`asyncio/base_events.py`), and
    any other path longer than `longer_than` by its last `keep` components (`…/launch/demo_service.py`)."""
    text = str(path)
    short = _PACKAGES.sub("", text, count=1)
    if short == text:
        short = _STDLIB.sub("", text, count=1)
    if short != text or len(text) <= longer_than or not text.startswith("/"):
        return short
    parts = text.split("/")
    return text if len(parts) <= keep + 1 else "…/" + "/".join(parts[-keep:])
