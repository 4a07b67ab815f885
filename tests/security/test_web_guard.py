"""`perftop web` lets in only its own page: the token, the websocket's Origin, the session limit, the
terminal size clamp and the session's address-space limit, checked against a real server with a real
websocket client (aiohttp's); and a read-only session's `g`, `m` and `i` leave a real target untouched
(its own `gc.get_stats()` and `tracemalloc.is_tracing()` are the oracle) while `--allow-actions` runs them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import aiohttp
import psutil
import pytest

from perftop.collectors.discovery import find_agent
from tests.helpers import free_port, short_tmp_dir, wait_for
from tests.targets.agent_harness import ROOT
from tests.targets.exp_procs import Command, run

ESCAPE = re.compile(rb"\x1b(\[[0-9;?<>=]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")
"""ANSI control sequences (CSI, OSC, two-byte escapes): stripped to read the screen's words."""
CURSOR_TO = re.compile(rb"\x1b\[(\d+);(\d+)H")
GC_TARGET = """\
import gc, sys, tracemalloc
import perftop

gc.disable()
perftop.start(name="web-guard-target")
print("ready", flush=True)
for _ in sys.stdin:
    print(gc.get_stats()[2]["collections"], int(tracemalloc.is_tracing()), flush=True)
"""
"""A target whose generation-2 collections happen only when something calls gc.collect(); each line in
asks it for (collections, tracing)."""


class Web:
    """`perftop web` on a free loopback port: its URL with the token, and where its pages are."""

    def __init__(self, command: Command, port: int) -> None:
        self.command = command
        self.port = port
        line = command.wait_line(rf"serving the TUI on (http://127\.0\.0\.1:{port})/\?token=([\w-]+) ")
        self.base, self.token = line.group(1), line.group(2)
        self.origin = self.base
        wait_for(lambda: _listening(port), timeout=30, interval=0.05)

    def sessions(self) -> list[psutil.Process]:
        """The server's session processes (perftop TUIs)."""
        return [p for p in psutil.Process(self.command.proc.pid).children() if p.is_running()]


@contextmanager
def web(*args: str) -> Iterator[Web]:
    port = free_port()
    with Command("web", "--listen", f"127.0.0.1:{port}", *args, group=True) as command:
        yield Web(command, port)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps cookies of IP-address hosts (aiohttp's default jar drops them)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


class Screen:
    """A websocket session: the terminal output it has received so far."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.data = b""
        self.closed: int | None = None

    def text(self, since: int = 0) -> str:
        return ESCAPE.sub(b"", self.data[since:]).decode("utf-8", "replace")

    async def until(self, predicate: Callable[[], bool], timeout: float = 60.0, since: int = 0) -> None:
        """Read output until `predicate` holds; AssertionError at the deadline or when the session ends."""
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                screen = self.text(since)[-3000:]
                raise AssertionError(f"{predicate} not seen within {timeout} s; screen: {screen!r}")
            try:
                message = await self.ws.receive(timeout=min(left, 1.0))
            except asyncio.TimeoutError:
                continue
            if message.type == aiohttp.WSMsgType.BINARY:
                self.data += message.data
            elif message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                self.closed = self.ws.close_code
                if not predicate():
                    raise AssertionError(f"the session ended ({self.closed}); screen: {self.text()!r}")

    def shows(self, words: str) -> Callable[[], bool]:
        """A predicate: `words` are in the output from now on."""
        mark = len(self.data)
        return lambda: words in self.text(mark)

    async def press(self, key: str) -> None:
        await self.ws.send_str(json.dumps(["stdin", key]))

    async def press_until(self, key: str, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        """Press `key` until `predicate` holds: Textual drops a key that arrives before the attached view
        has taken focus (which it does a while after first drawing the process), so one press may be lost."""
        deadline = time.monotonic() + timeout
        while True:
            await self.press(key)
            try:
                await self.until(predicate, timeout=min(5.0, max(0.1, deadline - time.monotonic())))
                return
            except AssertionError:
                if time.monotonic() > deadline or self.closed is not None:
                    raise


async def open_session(
    server: Web, session: aiohttp.ClientSession, size: tuple[object, object] = (160, 50)
) -> Screen:
    """Load the page with the token (it sets the cookie), then open the TUI's websocket as the page does."""
    async with session.get(f"{server.base}/?token={server.token}") as page:
        assert page.status == 200
    url = f"{server.base.replace('http', 'ws', 1)}/ws?width={size[0]}&height={size[1]}"
    return Screen(await session.ws_connect(url, origin=server.origin))


@pytest.fixture(scope="module")
def shared() -> Iterator[Web]:
    with web("--session-memory", "512") as server:
        yield server


async def test_no_token_or_a_wrong_one_is_refused_everywhere(shared: Web) -> None:
    async with client() as session:
        for path in ("/", "/static/js/textual.js", "/download/x", "/ws"):
            for query in ("", "?token=", f"?token={shared.token[:-1]}", f"?token={shared.token}x"):
                async with session.get(f"{shared.base}{path}{query}") as response:
                    assert response.status == 403, (path, query)
                    assert response.headers["Referrer-Policy"] == "no-referrer"
                    assert "perftop: this server needs its token" in await response.text()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"ws://127.0.0.1:{shared.port}/ws", origin=shared.origin)
        assert refused.value.status == 403
        # A cookie of another name, or the right name with a wrong value, does not do either.
        session.cookie_jar.update_cookies({f"perftop_token_{shared.port}": "x" * 43})
        async with session.get(f"{shared.base}/static/js/textual.js") as response:
            assert response.status == 403
    assert shared.sessions() == []


async def test_the_token_sets_a_strict_httponly_cookie_that_opens_the_rest(shared: Web) -> None:
    async with client() as session:
        async with session.get(f"{shared.base}/?token={shared.token}") as page:
            assert page.status == 200
            cookie = page.headers["Set-Cookie"]
        assert cookie.startswith(f"perftop_token_{shared.port}={shared.token};")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert page.headers["Referrer-Policy"] == "no-referrer" and page.headers["X-Frame-Options"] == "DENY"
        async with session.get(f"{shared.base}/static/js/textual.js") as script:
            assert script.status == 200


async def test_a_websocket_from_another_origin_is_refused(shared: Web) -> None:
    async with client() as session:
        async with session.get(f"{shared.base}/?token={shared.token}") as page:
            assert page.status == 200
        url = f"ws://127.0.0.1:{shared.port}/ws?token={shared.token}"
        for origin in (
            "http://evil.example.com",
            f"http://evil.example.com:{shared.port}",  # DNS rebinding: evil.example.com -> 127.0.0.1
            f"https://127.0.0.1:{shared.port}",
            f"http://127.0.0.1:{shared.port + 1}",
            "null",
            None,
        ):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(url, origin=origin)
            assert refused.value.status == 403, origin
    assert shared.sessions() == []


async def test_the_right_token_and_origin_start_a_session_with_a_clamped_size_and_memory(shared: Web) -> None:
    async with client() as session:
        screen = await open_session(shared, session, size=(100_000, 100_000))
        await screen.until(lambda: "process list" in screen.text())
        await screen.until(lambda: max_cursor(screen.data) == (200, 500))
        (child,) = shared.sessions()  # exec'd: one process per session, no shell left behind
        assert child.cmdline()[1:4] == ["-m", "perftop", "--read-only"]
        assert child.environ()["COLUMNS"] == "500" and child.environ()["ROWS"] == "200"
        limits = Path(f"/proc/{child.pid}/limits").read_text()
        assert re.search(rf"Max address space\s+{512 << 20}\s+{512 << 20}\s+bytes", limits), limits
        assert child.environ()["MALLOC_ARENA_MAX"] == "2"
        await screen.ws.close()
    wait_for(lambda: not shared.sessions(), timeout=30, interval=0.1)


async def test_a_resize_past_the_cap_is_clamped(shared: Web) -> None:
    async with client() as session:
        screen = await open_session(shared, session, size=(80, 24))
        await screen.until(lambda: "process list" in screen.text())
        mark = len(screen.data)  # everything before was drawn within 24 rows and 80 columns
        await screen.ws.send_str(json.dumps(["resize", {"width": 10**9, "height": "lots"}]))
        await screen.until(lambda: max_cursor(screen.data[mark:])[1] >= 500)
        assert max_cursor(screen.data[mark:]) == (24, 500)
        await screen.ws.close()
    wait_for(lambda: not shared.sessions(), timeout=30, interval=0.1)


def max_cursor(data: bytes) -> tuple[int, int]:
    """The largest (row, column) the output moved the cursor to: the terminal size the app draws for."""
    moves = [(int(r), int(c)) for r, c in CURSOR_TO.findall(data)]
    return (max(r for r, _ in moves), max(c for _, c in moves)) if moves else (0, 0)


async def test_sessions_past_the_limit_are_refused_with_a_reason() -> None:
    with web("--max-sessions", "1") as server:
        async with client() as session:
            first = await open_session(server, session)
            await first.until(lambda: "process list" in first.text())
            second = await open_session(server, session)
            await second.until(lambda: second.closed is not None, timeout=30)
            assert second.closed == 1013
            assert "1 sessions are open, the most this server allows (--max-sessions)" in second.text()
            assert len(server.sessions()) == 1
            await first.ws.close()
            wait_for(lambda: not server.sessions(), timeout=30, interval=0.1)
            third = await open_session(server, session)
            await third.until(lambda: "process list" in third.text())
            await third.ws.close()


async def test_a_session_whose_process_dies_is_closed_and_frees_its_place() -> None:
    with web("--max-sessions", "1") as server:
        async with client() as session:
            first = await open_session(server, session)
            await first.until(lambda: "process list" in first.text())
            (child,) = server.sessions()
            child.kill()  # as the kernel would past its memory, with no word to textual-serve
            await first.until(lambda: first.closed is not None, timeout=30)
            second = await open_session(server, session)
            await second.until(lambda: "process list" in second.text())
            await second.ws.close()


def test_bad_guard_options_are_one_line_errors() -> None:
    for args, fragment in (
        (("--token", "short"), "at least 16 characters"),
        (("--token", "long enough; but not for a cookie"), "a letter, a digit, - or _"),
        (("--max-sessions", "0"), "between 1 and 64"),
        (("--session-memory", "lots"), "whole number"),
        (("--session-memory", "100"), "between 512 and"),
        (("--public-url", "ftp://example.com"), "http:// or https://"),
    ):
        result = run("web", "--listen", f"127.0.0.1:{free_port()}", *args)
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("perftop: ") and fragment in lines[0], result.stderr


async def test_the_access_log_does_not_keep_the_token(tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "perftop", "web", "--listen", f"127.0.0.1:{port}"],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=str(ROOT),
        )
    try:
        assert proc.stderr is not None
        token = re.search(r"\?token=([\w-]+) ", proc.stderr.readline()).group(1)  # type: ignore[union-attr]
        wait_for(lambda: _listening(port), timeout=30, interval=0.05)
        async with client() as session, session.get(f"http://127.0.0.1:{port}/?token={token}") as page:
            assert page.status == 200
        wait_for(lambda: "GET /?token=<token>" in log.read_text(), timeout=30, interval=0.1)
        assert token not in log.read_text()
    finally:
        proc.kill()
        proc.wait()


def test_the_token_can_be_chosen_on_the_command_line_or_in_the_environment() -> None:
    chosen = "a-token-chosen-by-the-user-0123456789"
    with web("--token", chosen) as server:
        assert server.token == chosen
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PERFTOP_WEB_TOKEN": chosen + "-env"}
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "perftop", "web", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(ROOT),
    )
    try:
        assert proc.stderr is not None
        assert f"/?token={chosen}-env " in proc.stderr.readline()
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def target() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """The GC target with its agent, in a private socket directory."""
    with short_tmp_dir() as sockets:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PERFTOP_SOCKET_DIR": sockets}
        proc = subprocess.Popen(
            [sys.executable, "-c", GC_TARGET],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            wait_for(lambda: find_agent(proc.pid, sockets), timeout=20)
            yield proc, sockets
        finally:
            proc.kill()
            proc.wait()


def target_state(proc: subprocess.Popen[str]) -> tuple[int, bool]:
    """(generation-2 collections, tracemalloc tracing) as the target itself reports them."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("?\n")
    proc.stdin.flush()
    collections, tracing = proc.stdout.readline().split()
    return int(collections), tracing == "1"


async def attached_session(server: Web, session: aiohttp.ClientSession, pid: int) -> Screen:
    screen = await open_session(server, session)
    # The process pane's command line: the first sample has arrived, the attached view has the keys.
    await screen.until(lambda: f"attached to {pid}" in screen.text() and "web-guard-target" in screen.text())
    return screen


async def test_a_read_only_session_refuses_gc_memory_and_inject(
    target: tuple[subprocess.Popen[str], str],
) -> None:
    proc, sockets = target
    before = target_state(proc)
    assert before[1] is False
    with web("--", "--pid", str(proc.pid), "--socket-dir", sockets) as server:
        async with client() as session:
            screen = await attached_session(server, session, proc.pid)
            for key, notice in (
                ("g", "forced GC refused"),
                ("m", "memory tracing refused"),
                ("i", "injecting an agent refused"),
            ):
                await screen.press_until(key, screen.shows(notice))
            assert "Start perftop's agent inside" not in screen.text()  # no inject confirmation
            # The keys that only read still work: a thread dump reaches the agent and comes back.
            await screen.press("t")
            await screen.until(lambda: "MainThread" in screen.text())
            await screen.ws.close()
    assert target_state(proc) == before


async def test_allow_actions_lets_the_session_run_gc_and_trace_memory(
    target: tuple[subprocess.Popen[str], str],
) -> None:
    proc, sockets = target
    collections, tracing = target_state(proc)
    assert tracing is False
    with web("--allow-actions", "--", "--pid", str(proc.pid), "--socket-dir", sockets) as server:
        async with client() as session:
            screen = await attached_session(server, session, proc.pid)
            # Waiting reads the session's output all along: a client that stops reading stalls the TUI.
            await screen.press_until("g", lambda: target_state(proc)[0] > collections)
            await screen.until(lambda: "collected" in screen.text())
            # The Actions tab leaves nothing focused: back to the Process tab (drawn again), which focuses.
            mark = len(screen.data)
            await screen.press("1")
            await screen.until(lambda: "web-guard-target" in screen.text(mark))
            await screen.press_until("m", lambda: target_state(proc)[1])
            assert "refused" not in screen.text()
            await screen.ws.close()
