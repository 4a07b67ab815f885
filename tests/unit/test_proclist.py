"""ProcessLister against real processes: rows, CPU from deltas, object reuse, vanished processes."""

from __future__ import annotations

import os
import pwd
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from perftop.collectors.model import ProcessRow
from perftop.collectors.proclist import ProcessLister
from tests.helpers import Holder, kill, wait_for, wait_ready

HOLDER = str(Path(__file__).resolve().parent.parent / "targets" / "coll_holder.py")


def _row(rows: list[ProcessRow], pid: int) -> ProcessRow | None:
    return next((r for r in rows if r.pid == pid), None)


def test_finds_a_child_with_name_and_cmdline(holder: Holder) -> None:
    child = holder("--threads", "2", "--files", "1")
    rows = ProcessLister().sample()
    row = _row(rows, child.pid)
    assert row is not None
    assert row.name == psutil.Process(child.pid).name()
    assert row.cmdline == f"{sys.executable} {HOLDER} --threads 2 --files 1"
    assert row.username == pwd.getpwuid(os.geteuid()).pw_name
    assert row.rss_bytes > 0
    assert row.num_threads == 3
    assert row.cpu_percent == 0.0  # first sight of it: no baseline yet
    assert _row(rows, os.getpid()) is not None
    assert [r.pid for r in rows] == sorted(r.pid for r in rows)
    assert len({r.pid for r in rows}) == len(rows)


def test_reuses_process_objects_between_samples(holder: Holder) -> None:
    child = holder()
    lister = ProcessLister()
    lister.sample()
    first = lister.process(child.pid)
    assert first is not None
    lister.sample()
    assert lister.process(child.pid) is first
    assert lister.process(os.getpid()) is not None


def test_cpu_percent_from_deltas(holder: Holder) -> None:
    child = holder("--busy")
    lister = ProcessLister()
    lister.sample()

    def busy_shows() -> bool:
        row = _row(lister.sample(), child.pid)
        return row is not None and row.cpu_percent > 10.0

    wait_for(busy_shows, 20, "the busy child's CPU in the list", interval=0.05)


def test_vanished_processes_are_dropped(holder: Holder) -> None:
    reaped = holder()
    zombie = holder()
    lister = ProcessLister()
    rows = lister.sample()
    assert _row(rows, reaped.pid) is not None and _row(rows, zombie.pid) is not None
    reaped.kill()
    reaped.wait()
    zombie.kill()  # left unreaped until the fixture cleans up
    wait_for(
        lambda: psutil.Process(zombie.pid).status() == psutil.STATUS_ZOMBIE, 10, "the zombie", interval=0.05
    )
    rows = lister.sample()
    assert _row(rows, reaped.pid) is None
    assert lister.process(reaped.pid) is None
    zombie_row = _row(rows, zombie.pid)
    assert zombie_row is None or zombie_row.rss_bytes == 0


def test_kernel_threads_are_named_in_brackets() -> None:
    rows = ProcessLister().sample()
    kernel = [r for r in rows if r.pid == 2]
    if not kernel or kernel[0].rss_bytes != 0:
        pytest.skip("no kernel thread visible as PID 2 (e.g. in a PID namespace)")
    assert kernel[0].cmdline == f"[{kernel[0].name}]"


_REEXEC = """
import os, sys
if sys.argv[1] == "first":
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    sys.stdin.readline()
    os.execv(sys.executable, [sys.executable, "-c", os.environ["REEXEC"], "second"])
sys.stdout.write("again\\n")
sys.stdout.flush()
sys.stdin.read()
"""


@pytest.fixture
def reexec() -> Iterator[subprocess.Popen[bytes]]:
    """A Python child that, on a line from stdin, execs itself with other arguments (same PID, same name)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _REEXEC, "first"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "REEXEC": _REEXEC},
    )
    try:
        wait_ready(proc)
        yield proc
    finally:
        kill(proc)


def _exec_again(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    assert ready and proc.stdout.readline() == b"again\n"


def test_exec_to_another_program_is_followed_at_once() -> None:
    """An exec keeps the PID and start time but changes the command name: the row follows at once."""
    code = "import sys; sys.stdin.read()"
    shell = subprocess.Popen(
        ["sh", "-c", f'read line; exec {sys.executable} -c "{code}"'],
        stdin=subprocess.PIPE,
    )
    try:
        lister = ProcessLister(cmdline_max_age_s=3600)
        wait_for(
            lambda: _row(lister.sample(), shell.pid) is not None, 10, "the shell in the list", interval=0.05
        )
        row = _row(lister.sample(), shell.pid)
        assert row is not None and row.name == "sh" and row.cmdline.startswith("sh -c read line")
        assert shell.stdin is not None
        shell.stdin.write(b"go\n")
        shell.stdin.flush()
        wait_for(lambda: psutil.Process(shell.pid).name() != "sh", 10, "the exec", interval=0.05)
        row = _row(lister.sample(), shell.pid)
        assert row is not None
        assert row.name == psutil.Process(shell.pid).name()
        assert row.cmdline == f"{sys.executable} -c {code}"
    finally:
        if shell.poll() is None:
            shell.kill()
        shell.wait()
        if shell.stdin is not None:
            shell.stdin.close()


def test_rewritten_command_line_is_read_again_after_max_age(reexec: subprocess.Popen[bytes]) -> None:
    """A new command line under the same command name shows once the cached one is older than the max age."""
    fresh = ProcessLister(cmdline_max_age_s=0)
    cached = ProcessLister(cmdline_max_age_s=3600)
    for lister in (fresh, cached):
        row = _row(lister.sample(), reexec.pid)
        assert row is not None and row.cmdline.endswith(" first")
    _exec_again(reexec)
    row = _row(fresh.sample(), reexec.pid)
    assert row is not None and row.cmdline.endswith(" second")
    row = _row(cached.sample(), reexec.pid)
    assert row is not None and row.cmdline.endswith(" first")  # within its max age: the cached one


def test_cpu_percent_matches_psutil(holder: Holder) -> None:
    """The CPU share of a busy child agrees with psutil's own measure over the same interval."""
    child = holder("--busy")
    lister = ProcessLister()
    proc = psutil.Process(child.pid)
    lister.sample()
    proc.cpu_percent(None)
    time.sleep(1.0)  # the measuring interval, not a synchronisation
    ours = _row(lister.sample(), child.pid)
    theirs = proc.cpu_percent(None)
    assert ours is not None
    assert ours.cpu_percent > 10.0
    assert abs(ours.cpu_percent - theirs) < 15.0


def test_command_line_with_newlines_is_one_line() -> None:
    """A newline inside an argument (bash -c 'a\\nb', python -c) must not split the process list's row."""
    child = subprocess.Popen([sys.executable, "-c", "import time\ntime.sleep(30)\t", "x  y"])
    try:
        wait_for(
            lambda: Path(f"/proc/{child.pid}/cmdline").read_bytes().count(b"\0") == 4,
            10,
            "exec",
            interval=0.05,
        )
        row = _row(ProcessLister().sample(), child.pid)
        assert row is not None
        assert row.cmdline == f"{sys.executable} -c import time time.sleep(30) x y"
    finally:
        child.kill()
        child.wait()
