"""Fixtures shared by the test modules: a short socket directory, an exit stack for what a test starts, and
coll_holder.py processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.helpers import Holder, kill, short_tmp_dir, wait_ready

HOLDER = str(Path(__file__).resolve().parent / "targets" / "coll_holder.py")


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A private directory for agent sockets, short enough for a Unix socket path, removed after."""
    with short_tmp_dir() as path:
        yield path


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Everything a test starts is stopped here, whatever happens."""
    with ExitStack() as s:
        yield s


@pytest.fixture
def holder() -> Iterator[Holder]:
    """Starts tests/targets/coll_holder.py (ARGS, `exe=` another interpreter, Popen keywords), each waited
    for until it is ready; always kills and reaps what it started."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, exe: str = sys.executable, **popen: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(
            [exe, HOLDER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            **popen,  # type: ignore[call-overload]
        )
        started.append(proc)
        wait_ready(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            kill(proc)
