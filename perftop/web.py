"""`perftop web`: the TUI in a browser, served by textual-serve.

textual-serve answers HTTP and, for each browser session, starts `python -m perftop ARGS` with Textual's
web driver and relays it over a websocket. Anyone who can open the page drives a perftop session as the
user running `perftop web` (attach to processes, run actions in their agents), so the default address is
loopback and any other address gets a warning.
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import socket
import sys
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:8000"
NOT_IN_BROWSER = ("web", "export", "record", "run", "snapshot", "action", "inject")
"""Commands that are not the TUI: serving them to a browser makes no sense."""


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
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def add_web_parser(sub: Any) -> None:
    """Register `perftop web` on the CLI's subparsers."""
    p = sub.add_parser(
        "web",
        help="serve the TUI to a browser (textual-serve)",
        description="Serve the perftop TUI over HTTP: each browser session runs `perftop ARGS` (the "
        "arguments after --, e.g. `-- --pid 1234`). Loopback only by default: whoever opens the page "
        "acts as the user running this command.",
    )
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", help=f"default {DEFAULT_LISTEN}")
    p.add_argument(
        "--public-url",
        metavar="URL",
        help="the URL browsers reach this server at, when it differs from http://HOST:PORT (a proxy...)",
    )
    p.add_argument("tui_args", nargs=argparse.REMAINDER, metavar="-- PERFTOP ARGS")


def tui_command(tui_args: list[str]) -> str:
    """The shell command textual-serve runs for each browser session."""
    args = tui_args[1:] if tui_args[:1] == ["--"] else list(tui_args)
    return shlex.join([sys.executable, "-m", "perftop", *args])


def public_url(host: str, port: int) -> str:
    """Where browsers find the server: the host name for a wildcard address, IPv6 in brackets."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def run_web(args: argparse.Namespace) -> int:
    """`perftop web`: serve until interrupted. One-line `perftop: ` errors, exit 2 for bad input."""
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        return _fail(str(exc), 2)
    if port == 0:
        return _fail("--listen needs an explicit port for the browser to connect back to", 2)
    tui_args = list(args.tui_args or [])
    first = next((a for a in tui_args if a != "--"), None)
    if first in NOT_IN_BROWSER:
        return _fail(f"'perftop {first}' is not the TUI: nothing to show in a browser", 2)
    try:
        from textual_serve.server import Server
    except ImportError:
        return _fail("textual-serve is not installed: pip install textual-serve", 1)
    try:  # a clear error now rather than a traceback from the web server later
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return _fail(f"cannot listen on {args.listen}: {exc.strerror or exc}", 2)
    if not is_loopback(host):
        sys.stderr.write(
            f"perftop: warning: serving the TUI on {host}: anyone who can reach port {port} can use perftop "
            "as this user (attach to processes, profile them, run GC and EXPLAIN in them); prefer "
            "127.0.0.1 behind an authenticating proxy or an SSH tunnel\n"
        )
    url = args.public_url or public_url(host, port)
    sys.stderr.write(f"perftop: serving the TUI on {url}\n")
    sys.stderr.flush()
    server = Server(tui_command(tui_args), host=host, port=port, title="perftop", public_url=url)
    try:
        server.serve()
    except OSError as exc:
        return _fail(f"cannot serve on {args.listen}: {exc.strerror or exc}", 1)
    except KeyboardInterrupt:
        pass
    return 0


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"perftop: {message}\n")
    return code
