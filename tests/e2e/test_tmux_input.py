"""The terminal's input thread sleeps while nothing is typed, and keys still work: a lone Escape after a
long quiet spell, a tab key, and q, which must end the program although its input thread was asleep."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.tmux import Tmux
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

SELECT_SYSCALLS = {"x86_64": {23, 270}, "aarch64": {72}}
"""select and pselect6, by machine: what a thread waiting in `select.select` is in."""
QUIET_S = 3.0


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


def _perftop_pid(term: Tmux) -> int:
    """perftop's PID: the child of the pane's shell."""
    shell = int(term._tmux("display", "-p", "-t", term.session, "#{pane_pid}").strip())
    kids = Path(f"/proc/{shell}/task/{shell}/children")
    wait_for(lambda: kids.read_text().split(), timeout=10, what="perftop started by the pane's shell")
    return int(kids.read_text().split()[0])


def _waits_in_select(pid: int, tid: str) -> bool:
    try:
        nr = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()[0]
    except (OSError, IndexError):
        return False
    return nr.isdigit() and int(nr) in SELECT_SYSCALLS[platform.machine()]


def _switches(pid: int, tid: str) -> int:
    status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("voluntary_ctxt_switches")).split()[1])


@pytest.mark.skipif(platform.machine() not in SELECT_SYSCALLS, reason="select's syscall numbers unknown")
def test_the_input_thread_sleeps_while_idle_and_keys_still_work(
    child: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    term = Tmux([sys.executable, "-m", "perftop", "--pid", str(child.pid)], tmp_path, 100, 30)
    try:
        term.wait_screen(lambda s: f"process {child.pid}" in s and "nofile" in s)
        pid = _perftop_pid(term)
        readers = wait_for(
            lambda: [t.name for t in Path(f"/proc/{pid}/task").iterdir() if _waits_in_select(pid, t.name)],
            timeout=5,
            what="a thread of perftop waiting in select (the terminal's reader)",
        )
        assert len(readers) == 1, f"threads waiting in select: {readers}"
        reader = readers[0]
        # The terminal's answers to the queries made at start-up are input too: they may come late on a
        # loaded machine, each followed by the polling that times out a lone Escape. Wait until a second
        # passes without a wake-up, then count.
        last = [_switches(pid, reader)]

        def settled() -> bool:
            time.sleep(1.0)
            now = _switches(pid, reader)
            quiet, last[0] = now == last[0], now
            return quiet

        wait_for(settled, timeout=15, interval=0, what="a second without input for the terminal's reader")
        before = _switches(pid, reader)
        time.sleep(QUIET_S)
        woke = _switches(pid, reader) - before
        # Textual's own input thread wakes every 0.1 s: 30 times in these 3 s. One stray wake-up (input,
        # then the polling after it) is let pass.
        assert woke <= 4, f"the input thread woke {woke} times in {QUIET_S}s with nothing typed"

        term.send("Escape")  # alone, after the quiet: told from a sequence's start by its timeout
        term.wait_screen(lambda s: "Backspace or h" in s, timeout=5)
        time.sleep(QUIET_S)
        term.send("2")
        term.wait_screen(lambda s: "has no perftop agent" in s, timeout=5)
        time.sleep(QUIET_S)
        term.send("q")
        assert term.wait_exit(timeout=5) == 0
    finally:
        term.kill()
    assert child.poll() is None
