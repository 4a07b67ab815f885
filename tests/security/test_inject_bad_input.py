"""`perftop inject` on bad input, and on targets no preflight can stand for: one line, never a traceback,
and the target untouched (issue 12, and issue 10's "a clear refusal when no safe path exists")."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from perftop.launch.inject import InjectError, inject
from tests.helpers import run_perftop

REPO = Path(__file__).resolve().parent.parent.parent
SLEEPER = "import sys; print('ready', flush=True); sys.stdin.readline(); print('bye')"


def perftop(*args: str) -> subprocess.CompletedProcess[str]:
    return run_perftop(*args, env=dict(os.environ), cwd=REPO)


@pytest.mark.parametrize("pid", ["18446744073709551616", "4194305", "-1", "0", "1e3", "", "0x10"])
def test_bad_pid_is_one_line_exit_2(pid: str) -> None:
    result = perftop("inject", pid)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        f"perftop: argument PID: PID must be a positive whole number up to 4194304, not {pid!r}"
    )


@pytest.mark.parametrize("pid", [2**64, 4194305, -1, 0])
def test_bad_pid_through_the_api(pid: int) -> None:
    with pytest.raises(InjectError, match="PID must be a positive whole number up to 4194304") as info:
        inject(pid)
    assert info.value.bad_input


@pytest.fixture
def sleeper() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def start(started: list[subprocess.Popen[str]], argv: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    started.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def untouched(proc: subprocess.Popen[str], sock_dir: str) -> None:
    assert os.listdir(sock_dir) == []
    assert "TracerPid:\t0\n" in Path(f"/proc/{proc.pid}/status").read_text()
    assert "perftop" not in Path(f"/proc/{proc.pid}/maps").read_text()
    assert proc.stdin is not None
    proc.stdin.write("x\n")
    proc.stdin.flush()
    assert proc.communicate(timeout=30) == ("bye\n", None)
    assert proc.returncode == 0


def test_target_in_another_mount_namespace_is_refused(
    sleeper: list[subprocess.Popen[str]], sock_dir: str
) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare, to start a target in its own mount namespace")
    proc = start(sleeper, ["unshare", "-m", "--", sys.executable, "-S", "-c", SLEEPER])
    result = perftop("inject", str(proc.pid), "--socket-dir", sock_dir)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"perftop: PID {proc.pid} (python")
    assert "runs in another mount namespace" in result.stderr and f"nsenter -m -t {proc.pid}" in result.stderr
    untouched(proc, sock_dir)


def test_stopped_target_is_refused(sleeper: list[subprocess.Popen[str]], sock_dir: str) -> None:
    proc = start(sleeper, [sys.executable, "-S", "-c", SLEEPER])
    name = Path(f"/proc/{proc.pid}/comm").read_text().strip()
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        result = perftop("inject", str(proc.pid), "--socket-dir", sock_dir)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"perftop: PID {proc.pid} ({name}) is stopped (SIGSTOP, or Ctrl-Z): nothing could run in it; "
        f"resume it first (kill -CONT {proc.pid}), then try again\n"
    )
    untouched(proc, sock_dir)
