"""Running test programs as another user (e.g. `nobody`) from a root test run.

The test's own interpreter may live in a private home (pyenv under /root), so a Python the other user can
run is probed for, and given psutil from our environment and perftop from the repository.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

REPO = str(Path(__file__).resolve().parent.parent)


def dropper(uid: int, gid: int) -> Callable[[], None]:
    """A preexec_fn that becomes `uid`:`gid` with no supplementary groups."""

    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return drop


def foreign_env() -> dict[str, str]:
    """The environment for such a program: psutil from our virtualenv and perftop from the repository."""
    site = str(Path(psutil.__file__).resolve().parent.parent)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{REPO}:{site}"}


def as_user(uid: int, gid: int) -> dict[str, Any]:
    """The Popen keywords that run a program as `uid`:`gid` (no supplementary groups), in `/`, with
    foreign_env()."""
    return {"preexec_fn": dropper(uid, gid), "env": foreign_env(), "cwd": "/"}


def run_as(uid: int, gid: int, exe: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`exe ARGS...` run to its end as `uid`:`gid` (see as_user), output captured as text."""
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=timeout, check=False, **as_user(uid, gid)
    )


@functools.cache
def interpreter_for(uid: int, gid: int) -> str | None:
    """A Python that user `uid` can run and that imports psutil and perftop, or None."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        sys.executable,
        getattr(sys, "_base_executable", sys.executable),
        *(f"{d}/{name}" for d in ("/usr/local/bin", "/usr/bin") for name in (version, "python3")),
        shutil.which("python3"),
    ]
    for exe in dict.fromkeys(c for c in candidates if c):
        try:
            probe = run_as(uid, gid, exe, "-c", "import psutil, perftop.collectors.process")
        except OSError:  # missing, or not executable by that user
            continue
        if probe.returncode == 0:
            return exe
    return None


def nobody_python(purpose: str) -> tuple[int, int, str]:
    """User nobody's uid and gid and a Python it can run with perftop; the test is skipped (saying what
    root was needed for, `purpose`) when this run is not root or there is no such Python."""
    import pwd

    import pytest

    if os.geteuid() != 0:
        pytest.skip(f"needs root, {purpose}")
    user = pwd.getpwnam("nobody")
    exe = interpreter_for(user.pw_uid, user.pw_gid)
    if exe is None:
        pytest.skip("no Python that user nobody can run with perftop")
    return user.pw_uid, user.pw_gid, exe
