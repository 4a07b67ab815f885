"""perftop in a real terminal under tmux: attach to a child, read the screen, quit with q."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.tmux import Tmux

pytestmark = pytest.mark.e2e

CHILD = (
    "import resource, time\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (777, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n"
    "files = [open('/dev/null') for _ in range(40)]\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield proc
    proc.kill()
    proc.wait()


def test_attach_shows_system_and_process_panes_and_q_quits(
    child: subprocess.Popen[str], tmp_path: Path
) -> None:
    term = Tmux([sys.executable, "-m", "perftop", "--pid", str(child.pid)], tmp_path, 100, 30)
    try:
        screen = term.wait_screen(lambda s: f"process {child.pid}" in s and "nofile" in s)
        assert "system" in screen
        assert "cpu" in screen and "mem" in screen
        nofile = next(line for line in screen.splitlines() if "nofile" in line)
        assert "777" in nofile, nofile
        term.send("q")
        assert term.wait_exit() == 0
    finally:
        term.kill()
    assert child.poll() is None  # perftop never touched the process it watched


HOT = str(Path(__file__).resolve().parent.parent / "targets" / "cli_hot_app.py")


def test_p_profiles_and_shows_the_hot_function(tmp_path: Path) -> None:
    env_dir = str(tmp_path / "sockets")
    target = subprocess.Popen(
        [sys.executable, HOT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PERFTOP_SOCKET_DIR": env_dir},
    )
    term = None
    try:
        assert target.stdout is not None and target.stdout.readline().strip() == "ready"
        os.environ["PERFTOP_SOCKET_DIR"] = env_dir
        try:
            term = Tmux([sys.executable, "-m", "perftop", "--pid", str(target.pid)], tmp_path, 120, 40)
        finally:
            del os.environ["PERFTOP_SOCKET_DIR"]
        # the footer lists the attached view's keys once focus is inside it
        term.wait_screen(lambda s: f"process {target.pid}" in s and "p Profile" in s)
        term.send("p")
        screen = term.wait_screen(lambda s: "burn_cpu_here" in s, timeout=40)
        assert "CPU profile" in screen
        term.send("q")
        assert term.wait_exit() == 0
    finally:
        if term is not None:
            term.kill()
        target.kill()
        target.wait()
