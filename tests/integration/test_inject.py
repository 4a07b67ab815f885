"""Injecting the agent into running, uninstrumented Python processes (`perftop.launch.inject.inject`).

Targets are plain programs started with `python -S` (no site-packages, so nothing of perftop is
importable in them): the agent must come up, answer a snapshot, and the target must keep running and exit
normally afterwards. Every failure reason is forced by a test, and the target survives each one.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perftop.collectors.discovery import find_agent
from perftop.launch import inject_loader
from perftop.launch.inject import InjectError, inject
from perftop.wire import paths
from tests.foreign_user import dropper, foreign_env, nobody_python, run_as
from tests.helpers import perftop_json, wait_for

REPO = Path(__file__).resolve().parent.parent.parent
TARGET = str(REPO / "tests" / "targets" / "inj_target.py")
CLIENT = str(REPO / "tests" / "targets" / "inj_client.py")
PYENV = os.environ.get("PYENV_ROOT", "/root/.pyenv")

pytestmark = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")


def interpreter(minor: int) -> str | None:
    """A CPython 3.<minor> on this machine (pyenv, the throwaway venvs, PATH), or None."""
    candidates = [
        *sorted(glob.glob(f"{PYENV}/versions/3.{minor}.*/bin/python3.{minor}")),
        *sorted(glob.glob(f"/tmp/venv3.{minor}.*/bin/python3.{minor}")),
        shutil.which(f"python3.{minor}"),
    ]
    for exe in candidates:
        if exe and os.access(exe, os.X_OK):
            return exe
    return None


class Target:
    """A running inj_target.py; `stop()` ends it the way its mode expects and returns its exit code."""

    def __init__(self, exe: str, mode: str, tmp: Path, **popen: Any) -> None:
        self.mode = mode
        self.stop_file = tmp / f"stop-{mode}"
        self.proc = subprocess.Popen(
            [exe, "-S", TARGET, mode, str(self.stop_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
            **popen,
        )
        assert self.proc.stdout is not None
        self.pid = int(self.proc.stdout.readline())
        assert self.proc.stdout.readline().strip() == "ready"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> tuple[int, str, str]:
        assert self.proc.stdin is not None
        self.stop_file.touch()
        if self.mode in ("stdin", "select", "nodump"):
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


@pytest.fixture
def targets(tmp_path: Path) -> Iterator[list[Target]]:
    started: list[Target] = []
    yield started
    for target in started:
        target.kill()


def start(targets: list[Target], exe: str, mode: str, tmp: Path, **popen: Any) -> Target:
    target = Target(exe, mode, tmp, **popen)
    targets.append(target)
    return target


def snapshot(pid: int, sock_dir: str) -> dict[str, Any]:
    env = {**os.environ, "PERFTOP_SOCKET_DIR": sock_dir}
    snap: dict[str, Any] = perftop_json(
        "snapshot", "--pid", str(pid), "--json", "--interval", "0.2", env=env, timeout=60, cwd=REPO
    )
    return snap


def assert_injected_and_survives(target: Target, sock_dir: str, version: str) -> None:
    # A generous deadline: on a loaded machine a CPU-bound target can keep its new agent from answering
    # for seconds (GIL convoy), which is not what these tests are about.
    path = inject(target.pid, sock_dir, timeout=60)
    assert path == os.path.join(sock_dir, f"{target.pid}.sock")
    assert find_agent(target.pid, sock_dir) == path
    snap = snapshot(target.pid, sock_dir)
    agent = snap["agent"]
    assert agent is not None and agent["pid"] == target.pid
    assert agent["python"].startswith(version)
    assert agent["argv"] == [TARGET, target.mode, str(target.stop_file)]
    assert snap["process"]["pid"] == target.pid
    assert target.alive()
    code, out, err = target.stop()
    assert (code, out.strip(), err) == (0, "bye", "")
    assert not os.path.exists(path), "the injected agent left its socket behind"


@pytest.mark.parametrize("mode", ["sleep", "stdin", "select"])
def test_inject_into_python_311(mode: str, targets: list[Target], tmp_path: Path, sock_dir: str) -> None:
    target = start(targets, sys.executable, mode, tmp_path)
    assert_injected_and_survives(target, sock_dir, "3.11")


@pytest.mark.parametrize("minor", [10, 12, 13])
def test_inject_into_other_cpythons(minor: int, targets: list[Target], tmp_path: Path, sock_dir: str) -> None:
    exe = interpreter(minor)
    if exe is None:
        pytest.skip(f"no CPython 3.{minor} on this machine (looked in pyenv, /tmp/venv3.{minor}.*, PATH)")
    target = start(targets, exe, "sleep", tmp_path)
    assert_injected_and_survives(target, sock_dir, f"3.{minor}")


def test_second_inject_returns_the_same_agent(targets: list[Target], tmp_path: Path, sock_dir: str) -> None:
    target = start(targets, sys.executable, "sleep", tmp_path)
    first = inject(target.pid, sock_dir)
    assert inject(target.pid, sock_dir) == first
    assert os.listdir(sock_dir) == [f"{target.pid}.sock"]
    snap = snapshot(target.pid, sock_dir)
    assert snap["agent"]["pid"] == target.pid
    assert target.stop()[0] == 0


def test_no_gdb_on_path(
    targets: list[Target], tmp_path: Path, sock_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An idle target needs no gdb (pyinjector); a busy one does, and is refused untouched without it.
    inject_loader.library()
    idle = start(targets, sys.executable, "sleep", tmp_path)
    busy = start(targets, sys.executable, "busy", tmp_path)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert inject(idle.pid, sock_dir, timeout=60) == os.path.join(sock_dir, f"{idle.pid}.sock")
    with pytest.raises(InjectError) as info:
        inject(busy.pid, sock_dir, timeout=60)
    message = str(info.value)
    assert f"no safe way to inject into PID {busy.pid}" in message and "so it was not touched" in message
    assert "gdb is not installed (apt-get install gdb)" in message
    assert "\n" not in message
    assert not info.value.bad_input
    assert not os.path.exists(os.path.join(sock_dir, f"{busy.pid}.sock"))
    assert idle.stop()[0] == 0
    assert busy.stop() == (0, "bye\n", "")


def test_not_a_python_process(tmp_path: Path, sock_dir: str) -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(
            InjectError, match=rf"PID {proc.pid} \(sleep, .*\) is not a CPython process: give the"
        ) as info:
            inject(proc.pid, sock_dir)
        assert info.value.bad_input
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_dead_pid(sock_dir: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(
        InjectError, match=rf"no process with PID {proc.pid} .*: check the PID with ps"
    ) as info:
        inject(proc.pid, sock_dir)
    assert info.value.bad_input


def test_already_traced(targets: list[Target], tmp_path: Path, sock_dir: str) -> None:
    target = start(targets, sys.executable, "sleep", tmp_path)
    holder = subprocess.Popen(
        ["gdb", "-nx", "-batch", "-p", str(target.pid), "-ex", "shell sleep 60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: "TracerPid:\t0" not in Path(f"/proc/{target.pid}/status").read_text(),
            30,
            "gdb to attach",
            interval=0.05,
        )
        with pytest.raises(
            InjectError, match=rf"PID {target.pid} \(python.*\) is already being traced by PID"
        ):
            inject(target.pid, sock_dir)
    finally:
        holder.kill()
        holder.wait()
    assert target.stop()[0] == 0


def test_python_too_old(targets: list[Target], tmp_path: Path, sock_dir: str) -> None:
    exe = interpreter(9)
    if exe is None:
        pytest.skip("no CPython 3.9 on this machine")
    target = start(targets, exe, "sleep", tmp_path)
    with pytest.raises(InjectError, match=r"runs Python 3\.9; the agent needs 3\.10 or later"):
        inject(target.pid, sock_dir)
    assert target.stop()[0] == 0


def test_remote_debugging_disabled_on_314(targets: list[Target], tmp_path: Path, sock_dir: str) -> None:
    exe = interpreter(14)
    if exe is None:
        pytest.skip("no CPython 3.14 on this machine (sys.remote_exec needs one)")
    target = start(targets, exe, "sleep", tmp_path, env={**os.environ, "PYTHON_DISABLE_REMOTE_DEBUG": "1"})
    with pytest.raises(InjectError, match="remote debugging is disabled"):
        inject(target.pid, sock_dir)
    assert target.stop()[0] == 0


def as_nobody() -> tuple[int, int, str]:
    return nobody_python("to run the injector as user nobody")


def inject_as(uid: int, gid: int, exe: str, pid: int, sock_dir: str) -> str:
    result = run_as(uid, gid, exe, CLIENT, str(pid), sock_dir)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_different_user(targets: list[Target], tmp_path: Path, sock_dir: str) -> None:
    uid, gid, exe = as_nobody()
    target = start(targets, sys.executable, "sleep", tmp_path)
    out = inject_as(uid, gid, exe, target.pid, sock_dir)
    assert out.startswith(f"error PID {target.pid} (python"), out
    assert "runs as root (uid 0), not as this user (nobody" in out
    assert f"sudo perftop inject {target.pid}" in out
    assert target.stop()[0] == 0


def test_ptrace_not_permitted(targets: list[Target], tmp_path: Path) -> None:
    uid, gid, exe = as_nobody()
    target = start(targets, exe, "nodump", tmp_path, preexec_fn=dropper(uid, gid), env=foreign_env())
    out = inject_as(uid, gid, exe, target.pid, "")
    assert out.startswith("error "), out
    assert f"ptrace of PID {target.pid} is not permitted" in out or "ptrace_scope" in out, out
    assert "sudo perftop inject" in out or "--cap-add=SYS_PTRACE" in out, out
    assert target.alive()
    assert target.stop()[0] == 0


def test_root_injects_into_another_users_process(targets: list[Target], tmp_path: Path) -> None:
    uid, gid, exe = as_nobody()
    target = start(targets, exe, "stdin", tmp_path, preexec_fn=dropper(uid, gid), env=foreign_env())
    path = inject(target.pid)
    assert os.stat(path).st_uid == uid
    assert paths.pid_of_socket_name(os.path.basename(path)) == target.pid
    assert find_agent(target.pid) == path
    assert target.stop()[0] == 0
