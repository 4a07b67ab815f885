"""`perftop web`: the TUI served by textual-serve, opened in a real headless Chromium (Debian's package,
driven by Playwright without any browser download) at the URL with the token that `perftop web` prints; the
page shows the system pane's live text."""

from __future__ import annotations

import os
import re
import shutil
import socket
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port, wait_for
from tests.targets.exp_procs import Command, http_get, run

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREEN_TEXT = """() => {
    const terminal = window.perftopTerminal;
    if (!terminal) return "";
    const buffer = terminal.buffer.active;
    const lines = [];
    for (let y = 0; y < buffer.length; y++) {
        const line = buffer.getLine(y);
        if (line) lines.push(line.translateToString(true));
    }
    return lines.join("\\n");
}"""
"""The text on the page's terminal, read from xterm.js's screen buffer (it draws on a canvas)."""


def browser_or_skip() -> Any:
    """Playwright's sync API, or a skip saying what is missing (a failure when CI=true)."""
    missing = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "playwright is not installed (pip install playwright; no browser download needed)"
    if missing is None and not os.access(CHROMIUM, os.X_OK):
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    return sync_playwright


def expose_terminal(route: Any) -> None:
    """Serve textual-serve's page script with its xterm.js terminal also stored in a global, so the test
    can read the screen's text (the script is otherwise unchanged)."""
    response = route.fetch()
    script, found = re.subn(
        r"this\.terminal=new (\w+)\.Terminal\(",
        r"this.terminal=window.perftopTerminal=new \1.Terminal(",
        response.text(),
    )
    assert found == 1, "textual-serve's script changed: cannot find where it creates its terminal"
    route.fulfill(response=response, body=script)


def test_the_tui_opens_in_a_browser(stack: ExitStack) -> None:
    sync_playwright = browser_or_skip()
    port = free_port()
    server = stack.enter_context(Command("web", "--listen", f"127.0.0.1:{port}", group=True))
    url = server.wait_line(rf"serving the TUI on (http://127\.0\.0\.1:{port}/\?token=[\w-]{{40,}}) ").group(1)
    wait_for(lambda: _answers(url), timeout=30, interval=0.1)
    assert "warning" not in server.stderr
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.route("**/static/js/textual.js", expose_terminal)
            page.goto(url)
            # The system pane's title, and its cpu line once the first sample has arrived.
            page.wait_for_function(
                f"() => {{ const text = ({SCREEN_TEXT})(); return text.includes('system')"
                " && /cpu\\s+\\d+\\.\\d%/.test(text); }",
                timeout=60_000,
            )
            text = page.evaluate(SCREEN_TEXT)
            assert "perftop" in text and "process list" in text, text
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "web.png"))
        finally:
            browser.close()
    assert (ARTIFACTS / "web.png").stat().st_size > 10_000


def _answers(url: str) -> bool:
    try:
        return http_get(url, timeout=5)[0] == 200
    except OSError:
        return False


def test_a_non_loopback_address_gets_a_warning(stack: ExitStack) -> None:
    if shutil.which("ip") is None and not os.path.exists("/proc/net/dev"):
        pytest.skip("no network interfaces to bind to")
    server = stack.enter_context(Command("web", "--listen", f"0.0.0.0:{free_port()}", group=True))
    line = server.wait_line(r"warning")
    assert "0.0.0.0" in line.string and "127.0.0.1" in line.string
    server.wait_line(r"serving the TUI on http://")


def test_bad_web_arguments_are_one_line_errors() -> None:
    for args, fragment in (
        (("--listen", "127.0.0.1:0"), "explicit port"),
        (("--listen", "127.0.0.1:8000", "--", "export"), "not the TUI"),
    ):
        result = run("web", *args)
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("perftop: ") and fragment in lines[0], result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        result = run("web", "--listen", f"127.0.0.1:{busy.getsockname()[1]}")
    assert result.returncode == 2 and "cannot listen" in result.stderr, result.stderr
