"""`perftop demo`, README's first command, in a real terminal under tmux: every tab shows the demo's live
data, q quits and stops the service, and a terminal that goes away takes the service with it."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.tmux import Tmux
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[str]:
    """A private socket directory for the demo's agent (tmux passes PERFTOP_SOCKET_DIR through)."""
    path = str(tmp_path / "sockets")
    old = os.environ.get("PERFTOP_SOCKET_DIR")
    os.environ["PERFTOP_SOCKET_DIR"] = path
    yield path
    if old is None:
        del os.environ["PERFTOP_SOCKET_DIR"]
    else:
        os.environ["PERFTOP_SOCKET_DIR"] = old


def perftop_demo() -> list[str]:
    """`perftop demo` as installed beside this interpreter (the script pip made), else `python -m`."""
    script = Path(sys.executable).with_name("perftop")
    return [str(script), "demo"] if script.exists() else [sys.executable, "-m", "perftop", "demo"]


def demo_pid(term: Tmux) -> int:
    screen = term.wait_screen(lambda s: re.search(r"attached to \d+", s) is not None, timeout=60)
    match = re.search(r"attached to (\d+)", screen)
    assert match is not None
    return int(match.group(1))


def wait_gone(pid: int, timeout: float) -> None:
    wait_for(
        lambda: not (psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE),
        timeout,
        f"the demo service {pid} to exit",
        interval=0.1,
    )


def test_demo_shows_every_tab_and_q_stops_the_service(tmp_path: Path, sockets: str) -> None:
    term = Tmux(perftop_demo(), tmp_path, 120, 40)
    pid = None
    try:
        pid = demo_pid(term)
        assert "perftop.launch.demo_service" in " ".join(psutil.Process(pid).cmdline())
        screen = term.wait_screen(lambda s: "nofile" in s and "p Profile" in s)
        assert len(screen.splitlines()[1]) == 120, "the TUI did not take the terminal's width"
        term.send("2")
        screen = term.wait_screen(lambda s: "api.checkout" in s and "api.search" in s, timeout=30)
        assert "p99" in screen and "perftop-demo" in screen
        term.send("3")
        # The table and the pool line below it (they can reach the screen in two frames).
        term.wait_screen(lambda s: "N+1" in s and "FROM orders" in s and "pool:" in s, timeout=30)
        term.send("4")
        term.send("t")
        term.wait_screen(lambda s: "thread MainThread" in s and "_async_part" in s, timeout=30)
        term.send("q")
        assert term.wait_exit(timeout=30) == 0
        wait_gone(pid, timeout=15)
    finally:
        term.kill()
        if pid is not None and psutil.pid_exists(pid):
            psutil.Process(pid).kill()


def table(screen: str) -> str:
    """The queries tab's table: from its header to the selected row's line (the slow list comes after)."""
    after = screen.split("fingerprint", 2)
    return after[2].split("slowest recent")[0] if len(after) > 2 else ""


def test_explain_on_the_demos_join_query_shows_a_plan_tree(tmp_path: Path, sockets: str) -> None:
    """In a real terminal: the queries tab, `/` to find the join, `e`, and the plan as a tree with its
    warnings; `r` shows the raw plan, Escape closes it without leaving the attached view."""
    term = Tmux(perftop_demo(), tmp_path, 140, 45)
    pid = None
    try:
        pid = demo_pid(term)
        term.wait_screen(lambda s: "nofile" in s and "p Profile" in s)
        term.send("3")
        # Both the join and a query without one in the table, so that filtering shows in what it hides.
        term.wait_screen(
            lambda s: "JOIN customers" in s and "WHERE country = ? LIMIT" in table(s), timeout=60
        )
        term.send("/")
        term.wait_screen(lambda s: "filter fingerprints" in s, timeout=10)
        term.send("JOIN")
        # Filtered: the join is the one fingerprint left in the table (the others only in the slow list).
        term.wait_screen(
            lambda s: "WHERE country = ? LIMIT" not in table(s) and "JOIN" in table(s), timeout=10
        )
        term.send("Enter")  # keeps the filter and goes back to the table
        time.sleep(0.5)
        term.send("e")
        screen = term.wait_screen(lambda s: "EXPLAIN on sqlite" in s and "plan (r: raw)" in s, timeout=30)
        assert "SCAN orders" in screen or "SCAN customers" in screen, screen
        assert "! full table scan" in screen or "temporary index" in screen, screen
        term.send("r")
        term.wait_screen(lambda s: "plan, raw (r: tree)" in s and '"detail"' in s, timeout=10)
        term.send("Escape")
        term.wait_screen(lambda s: "queries (" in s and "EXPLAIN on" not in s, timeout=10)
        term.send("q")
        assert term.wait_exit(timeout=30) == 0
    finally:
        term.kill()
        if pid is not None and psutil.pid_exists(pid):
            psutil.Process(pid).kill()


def test_closing_the_terminal_stops_the_demo_service(tmp_path: Path, sockets: str) -> None:
    term = Tmux(perftop_demo(), tmp_path, 100, 30)
    pid = None
    try:
        pid = demo_pid(term)
        term.kill()  # the terminal goes away: perftop gets SIGHUP and dies without its cleanup
        wait_gone(pid, timeout=15)
    finally:
        term.kill()
        if pid is not None and psutil.pid_exists(pid):
            psutil.Process(pid).kill()
