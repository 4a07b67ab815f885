"""What the commands share: the one `fail()` and the argparse validators (PID, seconds, whole numbers,
`--listen`). Standard library only, argparse imported lazily: `perftop run` execs without importing it."""

from __future__ import annotations

import sys
from collections.abc import Callable


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
