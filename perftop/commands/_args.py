"""What the commands share: the exit codes and the two errors they raise, the one `fail()`, the argparse
validators (PID, seconds, whole numbers, `--listen`), the options several commands take, and the TUI launch
of `perftop`, `attach` and `demo`. Everything else is imported lazily: `perftop run` execs without argparse,
and a command imports only what it uses."""

from __future__ import annotations

import sys
from collections.abc import Callable

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad usage or bad input: `perftop: ` and the message on stderr, exit code 2."""


class Failure(Exception):
    """A runtime failure: `perftop: ` and the message on stderr, exit code 1."""


def say(message: str) -> None:
    """One `perftop: ` line on stderr, with any control character in it (paths, errors) escaped."""
    from perftop.render.units import safe_text

    sys.stderr.write(f"perftop: {safe_text(message, newlines=False)}\n")
    sys.stderr.flush()


def fail(message: str, code: int) -> int:
    """Say `message` as one `perftop: ` line and return the exit `code` (2 bad input, 1 runtime failure)."""
    say(message)
    return code


def whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`, else a one-line argparse error."""

    def parse(text: str) -> int:
        import argparse

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {text}")
        return value

    return parse


def parse_pid(text: str) -> int:
    """An argparse type: a PID from 1 to the kernel's PID_MAX_LIMIT, else a one-line error."""
    import argparse

    from perftop.wire.paths import PID_MAX

    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 0 < value <= PID_MAX:
        raise argparse.ArgumentTypeError(f"PID must be a positive whole number up to {PID_MAX}, not {text!r}")
    return value


def parse_seconds(
    text: str, low: float = 0.05, high: float = 3600, expected: str = "a number of seconds"
) -> float:
    """An argparse type: seconds from `low` to `high`, else a one-line error."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}") from None
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"seconds must be between {low:g} and {high:g}, not {text}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a refresh interval, 0.05 s to an hour."""
    return parse_seconds(text)


def positive_seconds(text: str) -> float:
    """An argparse type: any finite number of seconds above zero (`--duration`)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, not {text!r}")
    return value


def hz(text: str) -> float:
    """A sampling rate from 1 to 1000 Hz (what the agent accepts), else a one-line error (exit 2)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate in Hz, not {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"the rate must be between 1 and 1000 Hz, not {text}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number above zero."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, not {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number, zero included."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}")
    return value


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) -> (host, port); ValueError with a one-line message."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--listen wants HOST:PORT, not {text!r}")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"--listen port must be a number, not {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"--listen port must be between 0 and 65535, not {port}")
    return host, port


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_common_options(p: argparse.ArgumentParser) -> None:
    """`--interval S` and `--socket-dir DIR`, as every command that samples takes them."""
    p.add_argument(
        "--interval", type=seconds, default=1.0, metavar="S", help="refresh interval (default 1.0)"
    )
    p.add_argument("--socket-dir", metavar="DIR", help="where agents' sockets are (default as the agent's)")


def add_tui_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that opens the TUI: the common ones and `--theme NAME`."""
    add_common_options(p)
    p.add_argument("--theme", metavar="NAME", help="theme name or path to a theme file")


def check_target(pid: int) -> None:
    """UsageError (exit 2) unless `pid` is a process this user may watch."""
    from perftop.collectors.errors import CollectorError
    from perftop.collectors.process import check_pid

    try:
        check_pid(pid)
    except CollectorError as exc:
        raise UsageError(str(exc)) from None


def open_tui(pid: int | None, args: argparse.Namespace) -> int:
    """Run the TUI (attached to `pid`, else the process list) until it quits; its exit code. A PID that
    cannot be watched or a theme that cannot be read is a UsageError, before the screen is taken."""
    from perftop.tui.themes import ThemeError, resolve_theme

    if pid is not None:
        check_target(pid)
    try:
        theme, themes = resolve_theme(args.theme)
    except ThemeError as exc:
        raise UsageError(str(exc)) from None
    from perftop.tui.app import PerftopApp
    from perftop.tui.sources import LiveSources

    app = PerftopApp(
        sources=LiveSources(socket_dir=args.socket_dir),
        pid=pid,
        interval=args.interval,
        theme_name=theme.name,
        themes=themes,
        read_only=getattr(args, "read_only", False),
    )
    app.run()
    return app.return_code or EXIT_OK
