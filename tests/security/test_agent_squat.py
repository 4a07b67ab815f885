"""Another user squats a service user's default socket directory and serves a fake agent in it.

The service's agent must start anyway, in a private directory of its own, and say where; viewers (root's
and the service user's own) must find the real agent and refuse the fake one (SO_PEERCRED: wrong pid and
uid), so no spoofed figure reaches them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import random
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from perftop.collectors.agent_client import AgentClient, AgentError
from perftop.collectors.discovery import find_agent
from tests.foreign_user import REPO, as_user, dropper, interpreter_for, run_as

TARGETS = Path(__file__).resolve().parents[1] / "targets"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="playing two other users needs root")
WORK = 7
SPOOFED = 999_999


def start_as(uid: int, gid: int, exe: str, *args: str, **kw: object) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = subprocess.Popen([exe, *args], text=True, **as_user(uid, gid), **kw)  # type: ignore[call-overload]
    return proc


def viewer_env() -> dict[str, str]:
    """Root's viewer with the defaults: no socket directory of its own choosing."""
    env = {k: v for k, v in os.environ.items() if k not in ("PERFTOP_SOCKET_DIR", "XDG_RUNTIME_DIR")}
    env["PYTHONPATH"] = REPO
    return env


@pytest.fixture
def squatted() -> Iterator[tuple[int, str]]:
    """A fresh service uid (no passwd entry needed) whose default directory `nobody` has created."""
    uid = 3_000_000 + random.randint(0, 999_999)
    default = f"/tmp/perftop-{uid}"
    nobody = pwd.getpwnam("nobody")
    squatter_exe = interpreter_for(nobody.pw_uid, nobody.pw_gid)
    if squatter_exe is None:
        pytest.skip("no Python user nobody can run")
    try:
        subprocess.run(
            [squatter_exe, "-c", f"import os; os.mkdir({default!r}, 0o700)"],
            preexec_fn=dropper(nobody.pw_uid, nobody.pw_gid),
            check=True,
            timeout=30,
        )
        assert os.stat(default).st_uid == nobody.pw_uid
        yield uid, default
    finally:
        for directory in [default, *(f"{default}.{n}" for n in range(1, 9))]:
            shutil.rmtree(directory, ignore_errors=True)


def test_a_squatted_default_dir_neither_stops_the_agent_nor_fools_a_viewer(squatted: tuple[int, str]) -> None:
    uid, default = squatted
    nobody = pwd.getpwnam("nobody")
    exe = interpreter_for(uid, uid)
    squatter_exe = interpreter_for(nobody.pw_uid, nobody.pw_gid)
    if exe is None or squatter_exe is None:
        pytest.skip("no Python the test users can run")
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    victim = start_as(uid, uid, exe, str(TARGETS / "lc_victim.py"), **pipes)
    fake = None
    try:
        assert victim.stdout is not None
        ready = victim.stdout.readline().split()
        assert ready and ready[0] == "ready", victim.stderr.read() if victim.stderr else ready
        pid, real = int(ready[1]), ready[2]
        # The agent serves from a private directory of its own, not the squatted one...
        assert os.path.dirname(real) != default
        real_dir = os.stat(os.path.dirname(real))
        assert real_dir.st_uid == uid and stat.S_IMODE(real_dir.st_mode) == 0o700
        # ... and the squatter's directory is left as it was.
        assert os.stat(default).st_uid == nobody.pw_uid and os.listdir(default) == []

        fake_path = os.path.join(default, f"{pid}.sock")
        fake = start_as(
            nobody.pw_uid,
            nobody.pw_gid,
            squatter_exe,
            str(TARGETS / "lc_fake_agent.py"),
            fake_path,
            str(pid),
            stdout=subprocess.PIPE,
        )
        assert fake.stdout is not None and fake.stdout.readline().strip() == "serving"

        # Discovery passes over the squatter's directory and finds the real agent through /proc.
        assert find_agent(pid) == real
        # A client pointed straight at the fake refuses it: the peer is not process `pid`.
        with pytest.raises(AgentError, match=f"not by process {pid}"):
            AgentClient(fake_path).close()
        with AgentClient(real) as client:
            assert client.call("info")["pid"] == pid

        # `perftop snapshot --pid` as root, and as the service user itself, sees the real figures.
        snapshot = ["-m", "perftop", "snapshot", "--pid", str(pid), "--interval", "0.2", "--json"]
        snapshots = [
            subprocess.run(
                [sys.executable, *snapshot],
                env=viewer_env(),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            ),
            run_as(uid, uid, exe, *snapshot, timeout=120),
        ]
        for result in snapshots:
            assert result.returncode == 0, result.stderr
            doc = json.loads(result.stdout)
            assert doc["agent"]["pid"] == pid
            assert doc["counters"]["victim.work"]["value"] == WORK
    finally:
        for proc in (fake, victim):
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=30)
    # The agent said where it went instead, on stderr.
    assert victim.stderr is not None
    said = victim.stderr.read()
    assert f"{default} cannot be trusted" in said and f"listens at {real} instead" in said
