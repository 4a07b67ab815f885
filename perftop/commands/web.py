"""`perftop web`: the TUI in a browser, served by textual-serve.

textual-serve answers HTTP and, for each browser session, starts `python -m perftop ARGS` with Textual's
web driver and relays it over a websocket. Anyone who can drive a session acts as the user running
`perftop web`, so the server (`GuardedServer`, textual-serve's aiohttp application with a middleware and
two handlers overridden) lets in only requests that carry its secret token (the URL printed at start, then
an HttpOnly cookie), websockets only from its own origin, at most `--max-sessions` sessions at once, each
with a capped terminal size and address space, and sessions are read-only (no inject, forced GC, memory
tracing or EXPLAIN ANALYZE) unless `--allow-actions` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import re
import secrets
import shlex
import socket
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from perftop.commands._args import fail, is_loopback, parse_listen, whole

if TYPE_CHECKING:
    from aiohttp import web
    from aiohttp.typedefs import Handler

DEFAULT_LISTEN = "127.0.0.1:8000"
NOT_IN_BROWSER = ("web", "export", "record", "run", "snapshot", "action", "inject")
"""Commands that are not the TUI: serving them to a browser makes no sense."""
TOKEN_ENV = "PERFTOP_WEB_TOKEN"
"""The token, where `--token` is not given (an environment variable is not visible to `ps`)."""
MIN_TOKEN_LENGTH = 16
TOKEN_CHARACTERS = re.compile(r"[A-Za-z0-9_-]+")
"""What a token may be made of: safe in a URL and a cookie unquoted (`secrets.token_urlsafe`'s alphabet)."""
DEFAULT_MAX_SESSIONS = 4
MAX_COLUMNS, MAX_ROWS = 500, 200
"""The largest terminal a browser may ask for: Textual's screen buffers grow with its area."""
DEFAULT_SESSION_MEMORY_MB, MIN_SESSION_MEMORY_MB = 1024, 512
"""Address-space limit of each session's perftop process (RLIMIT_AS), in MiB: attached and profiling, a
session maps about 280 MiB."""
BUSY_CLOSE_CODE = 1013
"""WebSocket close code 'try again later', for a session past --max-sessions."""


def add_web_parser(sub: Any) -> None:
    """Register `perftop web` on the CLI's subparsers."""
    p = sub.add_parser(
        "web",
        help="serve the TUI to a browser (textual-serve)",
        description="Serve the perftop TUI over HTTP: each browser session runs `perftop ARGS` (the "
        "arguments after --, e.g. `-- --pid 1234`). Open the URL printed at start: it carries the secret "
        "token every request needs. Loopback only by default: whoever has the token acts as the user "
        "running this command.",
    )
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", help=f"default {DEFAULT_LISTEN}")
    p.add_argument(
        "--public-url",
        metavar="URL",
        help="the URL browsers reach this server at, when it differs from http://HOST:PORT (a proxy...)",
    )
    p.add_argument(
        "--token",
        metavar="TOKEN",
        help=f"the secret the URL must carry (default: ${TOKEN_ENV}, else a random one printed at start)",
    )
    p.add_argument(
        "--max-sessions",
        type=whole(1, 64),
        default=DEFAULT_MAX_SESSIONS,
        metavar="N",
        help=f"browser sessions at once; more are refused (default {DEFAULT_MAX_SESSIONS})",
    )
    p.add_argument(
        "--session-memory",
        type=whole(MIN_SESSION_MEMORY_MB, 1 << 20),
        default=DEFAULT_SESSION_MEMORY_MB,
        metavar="MB",
        help=f"address-space limit of each session's perftop process (default {DEFAULT_SESSION_MEMORY_MB})",
    )
    p.add_argument(
        "--allow-actions",
        action="store_true",
        help="let sessions change the attached process: inject an agent, force GC, trace memory, "
        "EXPLAIN ANALYZE (default: refused)",
    )
    p.add_argument("tui_args", nargs=argparse.REMAINDER, metavar="-- PERFTOP ARGS")


def tui_command(
    tui_args: list[str], read_only: bool = True, memory_mb: int = DEFAULT_SESSION_MEMORY_MB
) -> str:
    """The shell command textual-serve runs for each browser session: perftop (read-only unless actions
    are allowed) under an address-space limit, exec'd so that a session is one process."""
    args = tui_args[1:] if tui_args[:1] == ["--"] else list(tui_args)
    flags = ["--read-only"] if read_only else []
    perftop = shlex.join([sys.executable, "-m", "perftop", *flags, *args])
    # Few malloc arenas: each thread's 64 MiB arena reservation would otherwise count against the limit.
    return f"ulimit -v {memory_mb * 1024} && export MALLOC_ARENA_MAX=2 && exec {perftop}"


def public_url(host: str, port: int) -> str:
    """Where browsers find the server: the host name for a wildcard address, IPv6 in brackets."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of a URL as browsers send it in `Origin` (default ports left out), or None."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = 80 if parts.scheme == "http" else 443
    return f"{parts.scheme}://{host}" if port in (None, default) else f"{parts.scheme}://{host}:{port}"


def clamp_size(width: object, height: object) -> tuple[int, int]:
    """A terminal size from the browser, made whole numbers within 1..MAX_COLUMNS and 1..MAX_ROWS."""

    def whole(value: object, default: int) -> int:
        try:
            return int(str(value))
        except ValueError:
            return default

    return max(1, min(whole(width, 80), MAX_COLUMNS)), max(1, min(whole(height, 24), MAX_ROWS))


class Redact(logging.Filter):
    """Writes `<token>` for the token in the access log's lines (the first page's URL carries it)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message:
            record.msg, record.args = message.replace(self.token, "<token>"), ()
        return True


def make_server(
    command: str, host: str, port: int, url: str, token: str, origins: set[str], max_sessions: int
) -> Any:
    """textual-serve's Server with the guards; imported here so that `perftop web --help` needs no
    textual-serve."""
    from aiohttp import WSMsgType, web
    from textual_serve.app_service import AppService
    from textual_serve.server import Server

    cookie = f"perftop_token_{port}"
    secure = url.startswith("https:")

    def valid(candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(candidate.encode(), token.encode())

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every request carries the token: `?token=` (which sets the cookie) or the cookie."""
        if valid(request.query.get("token")):
            response: web.StreamResponse = await handler(request)
            if not response.prepared:
                response.set_cookie(cookie, token, httponly=True, samesite="Strict", path="/", secure=secure)
            return response
        if valid(request.cookies.get(cookie)):
            return await handler(request)
        raise web.HTTPForbidden(
            text="perftop: this server needs its token: open the URL `perftop web` printed at start\n"
        )

    async def harden(request: web.Request, response: web.StreamResponse) -> None:
        """Every response: no Referer carrying the token's URL elsewhere, no framing by another page."""
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = "frame-ancestors 'none'"

    class Session(AppService):
        """One session's perftop process. The page is closed when the process ends, however it ends
        (textual-serve closes it only on the app's own exit message), so that a killed session frees its
        place under --max-sessions."""

        async def run(self) -> None:
            await super().run()
            await self.remote_close()

    class GuardedServer(Server):
        """textual-serve's server, with the token middleware, the Origin check, the session limit, the
        terminal size clamp and sessions that end with their process."""

        sessions = 0
        """Websocket sessions open now."""

        def initialize_logging(self) -> None:
            super().initialize_logging()
            logging.getLogger("aiohttp.access").addFilter(Redact(token))

        async def _make_app(self) -> web.Application:
            app = await super()._make_app()
            app.middlewares.append(require_token)
            app.on_response_prepare.append(harden)
            return app

        async def on_startup(self, app: web.Application) -> None:
            """Quiet: `run_web` has printed the URL (textual-serve's banner would print it without the
            token)."""

        async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
            """One browser session (textual-serve's handler, with the guards and `Session`)."""
            origin = request.headers.get("Origin")
            if origin is None or origin_of(origin) not in origins:
                raise web.HTTPForbidden(text="perftop: a websocket from another origin than this server's\n")
            if self.sessions >= max_sessions:
                return await self._refuse_busy(request)
            width, height = clamp_size(request.query.get("width", 80), request.query.get("height", 24))
            websocket = web.WebSocketResponse(heartbeat=15)
            service: Session | None = None

            async def close() -> None:
                await websocket.close()

            self.sessions += 1
            try:
                await websocket.prepare(request)
                service = Session(
                    self.command,
                    write_bytes=websocket.send_bytes,
                    write_str=websocket.send_str,
                    close=close,
                    download_manager=self.download_manager,
                    debug=self.debug,
                )
                await service.start(width, height)
                await self._process_messages(websocket, service)
            except asyncio.CancelledError:
                await websocket.close()
            except Exception:
                logging.getLogger("textual-serve").exception("perftop web: the session failed")
            finally:
                if service is not None:
                    await service.stop()
                self.sessions -= 1
            return websocket

        async def _refuse_busy(self, request: web.Request) -> web.WebSocketResponse:
            """Past --max-sessions: say so on the page's terminal, then close ('try again later')."""
            message = (
                f"perftop: {max_sessions} sessions are open, the most this server allows "
                "(--max-sessions); close one and reload"
            )
            websocket = web.WebSocketResponse()
            await websocket.prepare(request)
            await websocket.send_bytes(message.encode() + b"\r\n")
            await websocket.close(code=BUSY_CLOSE_CODE, message=message[:120].encode())
            return websocket

        async def _process_messages(self, websocket: web.WebSocketResponse, app_service: AppService) -> None:
            """The browser's messages to the session (as textual-serve's own loop, with the resize
            clamped and malformed messages ignored rather than ending the session)."""
            async for message in websocket:
                if message.type != WSMsgType.TEXT:
                    continue
                try:
                    envelope = json.loads(message.data)
                    kind, data = (envelope[0], envelope[1]) if isinstance(envelope, list) else (None, None)
                except (ValueError, IndexError):
                    continue
                if kind == "stdin" and isinstance(data, str):
                    await app_service.send_bytes(data.encode("utf-8"))
                elif kind == "resize" and isinstance(data, dict):
                    await app_service.set_terminal_size(*clamp_size(data.get("width"), data.get("height")))
                elif kind == "ping":
                    await websocket.send_json(["pong", data])
                elif kind == "blur":
                    await app_service.blur()
                elif kind == "focus":
                    await app_service.focus()

    return GuardedServer(command, host=host, port=port, title="perftop", public_url=url)


def run_web(args: argparse.Namespace) -> int:
    """`perftop web`: serve until interrupted. One-line `perftop: ` errors, exit 2 for bad input."""
    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        return fail(str(exc), 2)
    if port == 0:
        return fail("--listen needs an explicit port for the browser to connect back to", 2)
    tui_args = list(args.tui_args or [])
    first = next((a for a in tui_args if a != "--"), None)
    if first in NOT_IN_BROWSER:
        return fail(f"'perftop {first}' is not the TUI: nothing to show in a browser", 2)
    token = args.token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(32)
    if len(token) < MIN_TOKEN_LENGTH or not TOKEN_CHARACTERS.fullmatch(token):
        return fail(
            f"the token must be at least {MIN_TOKEN_LENGTH} characters, each a letter, a digit, - or _", 2
        )
    url = (args.public_url or public_url(host, port)).rstrip("/")
    if origin_of(url) is None:
        return fail(f"--public-url must be an http:// or https:// URL, not {args.public_url!r}", 2)
    try:
        import aiohttp  # noqa: F401
        import textual_serve  # noqa: F401
    except ImportError:
        return fail("textual-serve is not installed: pip install textual-serve", 1)
    try:  # a clear error now rather than a traceback from the web server later
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return fail(f"cannot listen on {args.listen}: {exc.strerror or exc}", 2)
    if not is_loopback(host):
        sys.stderr.write(
            f"perftop: warning: serving the TUI on {host}: anyone who can reach port {port} and has the "
            "token can use perftop as this user (attach to processes, profile them); prefer 127.0.0.1 "
            "behind an authenticating proxy or an SSH tunnel\n"
        )
    origins = {o for o in (origin_of(url), origin_of(public_url(host, port))) if o is not None}
    command = tui_command(tui_args, read_only=not args.allow_actions, memory_mb=args.session_memory)
    server = make_server(command, host, port, url, token, origins, args.max_sessions)
    mode = "actions allowed" if args.allow_actions else "read-only: --allow-actions enables actions"
    sys.stderr.write(f"perftop: serving the TUI on {url}/?token={token} ({mode})\n")
    sys.stderr.flush()
    try:
        server.serve()
    except OSError as exc:
        return fail(f"cannot serve on {args.listen}: {exc.strerror or exc}", 1)
    except KeyboardInterrupt:
        pass
    return 0
