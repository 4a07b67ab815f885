"""Who may reach an agent: the socket's place and modes, and the peer-credential check on every accept."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from perftop.collectors.agent_client import AgentClient
from tests.helpers import short_tmp_dir, wait_for
from tests.targets.agent_harness import Target

FOREIGN_CLIENT = Path(__file__).resolve().parents[1] / "targets" / "agent_foreign_client.py"
SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
NOBODY = 65534


def run_as_nobody(socket_path: str) -> dict[str, object]:
    """Run the foreign client as `nobody` (setpriv, else runuser) and return what it saw."""
    if shutil.which("setpriv"):
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    elif shutil.which("runuser"):
        cmd = ["runuser", "-u", "nobody", "--"]
    else:
        pytest.skip("neither setpriv nor runuser is installed")
    proc = subprocess.run(
        [*cmd, SYSTEM_PYTHON, str(FOREIGN_CLIENT), socket_path],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    assert result["uid"] == NOBODY
    return result


def test_socket_is_0600_in_a_0700_dir() -> None:
    with short_tmp_dir() as tmp:
        socks = os.path.join(tmp, "socks")
        with Target(socks) as t:
            assert stat.S_IMODE(os.stat(socks).st_mode) == 0o700
            assert stat.S_ISSOCK(os.stat(t.socket).st_mode)
            assert stat.S_IMODE(os.stat(t.socket).st_mode) == 0o600
            assert os.stat(t.socket).st_uid == os.getuid()


def test_an_existing_dir_of_ours_is_tightened_to_0700() -> None:
    with short_tmp_dir() as tmp:
        socks = os.path.join(tmp, "socks")
        os.mkdir(socks)
        os.chmod(socks, 0o755)
        with Target(socks) as t:
            assert stat.S_IMODE(os.stat(socks).st_mode) == 0o700
            assert os.path.exists(t.socket)


@needs_root
def test_a_dir_owned_by_another_uid_is_refused_and_the_app_goes_on() -> None:
    with short_tmp_dir() as tmp:
        socks = os.path.join(tmp, "socks")
        os.mkdir(socks, 0o700)
        os.chown(socks, NOBODY, NOBODY)
        with Target(socks, expect_socket=False) as t:
            assert t.socket == "None"
            assert os.listdir(socks) == []
            assert t.cmd("work 10") == "done 10"
            wait_for(lambda: "owned by uid 65534" in t.stderr)


def test_a_symlinked_dir_is_refused() -> None:
    with short_tmp_dir() as tmp:
        real = os.path.join(tmp, "real")
        os.mkdir(real, 0o700)
        link = os.path.join(tmp, "link")
        os.symlink(real, link)
        with Target(link, expect_socket=False) as t:
            assert t.socket == "None"
            assert os.listdir(real) == []
            assert t.cmd("work 10") == "done 10"
            wait_for(lambda: "symlink" in t.stderr)


@needs_root
def test_another_uid_cannot_reach_the_socket() -> None:
    with short_tmp_dir() as tmp:
        os.chmod(tmp, 0o755)
        with Target(os.path.join(tmp, "socks")) as t:
            seen = run_as_nobody(t.socket)
            assert seen["connect"] == "denied"
            assert seen["frames"] == []
            with AgentClient(t.socket) as client:
                assert client.call("info")["pid"] == t.pid


@needs_root
def test_a_peer_of_another_uid_is_refused_even_if_the_modes_let_it_in() -> None:
    with short_tmp_dir() as tmp:
        os.chmod(tmp, 0o755)
        socks = os.path.join(tmp, "socks")
        with Target(socks) as t:
            # Someone loosened the modes: the SO_PEERCRED check on accept still refuses the peer.
            os.chmod(socks, 0o755)
            os.chmod(t.socket, 0o666)
            seen = run_as_nobody(t.socket)
            assert seen["connect"] == "ok"
            frames = seen["frames"]
            assert isinstance(frames, list) and len(frames) == 1
            assert frames[0]["type"] == "error"
            assert "uid 65534" in frames[0]["message"]
            assert t.alive()
            with AgentClient(t.socket) as client:
                stats = client.call("stats")
            assert stats["overflow"]["viewers_refused"] == 1
