"""`perftop inject` never harms its target (issue 10): idle and busy targets on every CPython 3.10-3.13.

Each target (tests/targets/inj_idle.py, run with -S so nothing of perftop is importable in it) waits the way a
service does: time.sleep, select, an asyncio loop (epoll), socket recv, threading.Event.wait, a read of stdin,
or it is busy in pure-Python code. After `perftop inject`, its agent must answer, it must still be alive,
still be waiting (nothing written yet), and its wait must then end exactly when woken, with what woke it: the
byte or line sent after the injection; the sleeper must have kept ticking with no sleep cut short. A preflight
that fails leaves the target untouched: no agent, no tracer, no loader mapped, exit code 1, one line.
"""

from __future__ import annotations

import glob
import os
import select
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perftop.collectors.agent_client import AgentClient
from perftop.launch.inject import InjectError, inject
from tests.helpers import run_perftop

REPO = Path(__file__).resolve().parent.parent.parent
IDLE = str(REPO / "tests" / "targets" / "inj_idle.py")
PYENV = os.environ.get("PYENV_ROOT", "/root/.pyenv")
IDLE_MODES = ["sleep", "select", "asyncio", "recv", "event", "stdin"]
AMX = any(
    "amx_tile" in line.split() for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line
)
"""Where gdb 13's inferior calls killed targets (it cannot write back AMX register state)."""
TICK_S = 0.05


def pyenv_python(minor: int) -> str | None:
    found = sorted(glob.glob(f"{PYENV}/versions/3.{minor}.*/bin/python3.{minor}"))
    return found[-1] if found else None


class Idle:
    """A running inj_idle.py: `wake()` sends what ends its wait, `finish()` its last line and exit code."""

    def __init__(self, exe: str, mode: str, **popen: Any) -> None:
        self.mode = mode
        self.peer: socket.socket | None = None
        stdin: Any = subprocess.PIPE
        if mode == "recv":
            self.peer, theirs = socket.socketpair()
            stdin = theirs.fileno()
        self.proc = subprocess.Popen(
            [exe, "-S", IDLE, mode],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            **popen,
        )
        if mode == "recv":
            theirs.close()
        assert self.proc.stdout is not None
        self.pid = int(self.proc.stdout.readline())
        assert self.proc.stdout.readline().strip() == b"ready"

    def said_nothing(self, seconds: float) -> bool:
        assert self.proc.stdout is not None
        return not select.select([self.proc.stdout], [], [], seconds)[0]

    def wake(self, word: str) -> None:
        if self.peer is not None:
            self.peer.sendall(word[:1].encode())
        else:
            assert self.proc.stdin is not None
            self.proc.stdin.write(word.encode() + b"\n")
            self.proc.stdin.flush()

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out.decode().strip(), err.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)
        if self.peer is not None:
            self.peer.close()


@pytest.fixture
def idles() -> Iterator[list[Idle]]:
    started: list[Idle] = []
    yield started
    for idle in started:
        idle.kill()


@pytest.mark.parametrize("mode", IDLE_MODES)
@pytest.mark.parametrize("minor", [10, 11, 12, 13])
def test_target_survives_and_keeps_waiting(minor: int, mode: str, idles: list[Idle], sock_dir: str) -> None:
    exe = pyenv_python(minor)
    if exe is None:
        pytest.skip(f"no CPython 3.{minor} under {PYENV}/versions")
    idle = Idle(exe, mode)
    idles.append(idle)
    path = inject(idle.pid, sock_dir, timeout=60)
    with AgentClient(path, timeout=30) as client:
        info = client.call("info")
    assert info["pid"] == idle.pid and info["python"].startswith(f"3.{minor}.")
    assert info["argv"] == [IDLE, mode]
    # Through pyinjector (its library is mapped), never gdb: no extended register state was written.
    assert "/perftop-agent-loader.so" in Path(f"/proc/{idle.pid}/maps").read_text()
    assert idle.proc.poll() is None
    assert idle.said_nothing(0.5), "the target's wait ended before it was woken"
    idle.wake("later")
    code, out, err = idle.finish()
    assert (code, err) == (0, ""), out
    check_ending(mode, out)
    assert not os.path.exists(path), "the injected agent left its socket behind"


def check_ending(mode: str, out: str) -> None:
    words = out.split()
    if mode == "sleep":
        ticks, seconds, shortest = int(words[2]), float(words[3]), float(words[4])
        assert shortest >= TICK_S - 0.002, f"a sleep was cut short: {out}"
        assert ticks * TICK_S <= seconds + 0.01
        assert ticks >= seconds / TICK_S / 4, f"the sleeper stopped ticking for a while: {out}"
    elif mode == "recv":
        assert words == ["bye", "recv", "l"]
    else:
        assert words == ["bye", mode, "later"]


@pytest.mark.parametrize("minor", [10, 13])
def test_busy_main_thread_with_a_waiting_thread(minor: int, idles: list[Idle], sock_dir: str) -> None:
    # The usual service: the main thread computes while another waits. pyinjector borrows the waiting one.
    exe = pyenv_python(minor)
    if exe is None:
        pytest.skip(f"no CPython 3.{minor} under {PYENV}/versions")
    idle = Idle(exe, "mixed")
    idles.append(idle)
    path = inject(idle.pid, sock_dir, timeout=60)
    with AgentClient(path, timeout=30) as client:
        assert client.call("info")["pid"] == idle.pid
    assert "/perftop-agent-loader.so" in Path(f"/proc/{idle.pid}/maps").read_text()
    assert idle.proc.poll() is None and idle.said_nothing(0.2)
    idle.wake("later")
    assert idle.finish() == (0, "bye mixed later", "")


@pytest.mark.parametrize("minor", [10, 11, 12, 13])
def test_busy_target_injected_or_refused_untouched(minor: int, idles: list[Idle], sock_dir: str) -> None:
    # No thread waits in a system call, so pyinjector may not borrow one: gdb's pending call is the only
    # way, used where its preflight passes (required off AMX CPUs); otherwise a refusal, target untouched.
    exe = pyenv_python(minor)
    if exe is None:
        pytest.skip(f"no CPython 3.{minor} under {PYENV}/versions")
    if shutil.which("gdb") is None:
        pytest.skip("a busy target needs gdb, which is not installed")
    idle = Idle(exe, "busy")
    idles.append(idle)
    try:
        path = inject(idle.pid, sock_dir, timeout=60)
    except InjectError as exc:
        if not AMX:
            raise
        message = str(exc)
        assert message.startswith(f"no safe way to inject into PID {idle.pid}") and "\n" not in message
        assert "gdb: failed on a throwaway process" in message and "so it was not touched" in message
        assert os.listdir(sock_dir) == []
        assert "perftop" not in Path(f"/proc/{idle.pid}/maps").read_text()
    else:
        with AgentClient(path, timeout=30) as client:
            assert client.call("info")["pid"] == idle.pid
    assert idle.proc.poll() is None and idle.said_nothing(0.2)
    idle.wake("later")
    assert idle.finish() == (0, "bye busy later", "")


def test_failed_preflight_leaves_the_target_untouched(
    idles: list[Idle], tmp_path: Path, sock_dir: str
) -> None:
    # A copy of the interpreter (its standard library reached through lib/) that, once the target runs,
    # no one may execute: the preflight cannot start its throwaway process, so nothing may be injected.
    exe = pyenv_python(11)
    if exe is None:
        pytest.skip(f"no CPython 3.11 under {PYENV}/versions")
    prefix = Path(exe).resolve().parent.parent
    (tmp_path / "bin").mkdir()
    copy = tmp_path / "bin" / "python3.11"
    shutil.copy2(exe, copy)
    (tmp_path / "lib").symlink_to(prefix / "lib")
    idle = Idle(str(copy), "select")
    idles.append(idle)
    copy.chmod(0o600)
    cli_args = ("inject", str(idle.pid), "--socket-dir", sock_dir, "--timeout", "30")
    result = run_perftop(*cli_args, env=dict(os.environ), timeout=120, cwd=REPO)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"perftop: no safe way to inject into PID {idle.pid} (python3.11, waiting: select)"
    )
    assert "so it was not touched" in lines[0] and "Permission denied" in lines[0]
    assert os.listdir(sock_dir) == []
    status = Path(f"/proc/{idle.pid}/status").read_text()
    assert "TracerPid:\t0\n" in status
    assert "perftop" not in Path(f"/proc/{idle.pid}/maps").read_text()
    assert idle.said_nothing(0.2)
    idle.wake("later")
    assert idle.finish() == (0, "bye select later", "")


BROKEN_GDB = """#!{python}
# gdb, made to fail the way gdb 13 does on CPUs with AMX: it leaves the thread it called into unable to
# restart its interrupted system call (orig_rax -1), which then returns -ERESTART... (errno 514, 516) to
# the program. Runs the real gdb on perftop's script with that one line added before it detaches.
import os, sys

args = sys.argv[1:]
script = args[args.index("-x") + 1]
with open(script) as f:
    text = f.read()
detach = 'gdb.execute("detach", to_string=True)'
assert detach in text
with open(script, "w") as f:
    f.write(text.replace(detach, 'gdb.execute("set $orig_rax = -1"); ' + detach))
os.execv({gdb!r}, [{gdb!r}, *args])
"""


def test_a_method_that_harms_the_throwaway_process_is_not_used(
    idles: list[Idle], tmp_path: Path, sock_dir: str
) -> None:
    # No C compiler and no built library (so no pyinjector), and a gdb that breaks system-call restarts:
    # the preflight's sleeping process dies of it, so the sleeping target is refused, untouched.
    gdb = shutil.which("gdb")
    if gdb is None or not Path("/proc/self/syscall").exists() or os.uname().machine != "x86_64":
        pytest.skip("needs gdb on x86_64")
    exe = pyenv_python(11) or sys.executable
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gdb").write_text(BROKEN_GDB.format(python=sys.executable, gdb=gdb))
    (bin_dir / "gdb").chmod(0o755)
    idle = Idle(exe, "sleep")
    idles.append(idle)
    env = {**os.environ, "PATH": str(bin_dir), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    cli_args = ("inject", str(idle.pid), "--socket-dir", sock_dir, "--timeout", "60")
    result = run_perftop(*cli_args, env=env, timeout=180, cwd=REPO)
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"perftop: no safe way to inject into PID {idle.pid} (")
    assert "pyinjector: no C compiler" in lines[0]
    assert (
        "gdb: " in lines[0]
        and "the throwaway process was harmed (exit code 1: OSError: [Errno 51" in lines[0]
    )
    assert os.listdir(sock_dir) == []
    assert "perftop" not in Path(f"/proc/{idle.pid}/maps").read_text()
    assert idle.said_nothing(0.2)
    idle.wake("later")
    code, out, err = idle.finish()
    assert (code, err) == (0, ""), out
    check_ending("sleep", out)
