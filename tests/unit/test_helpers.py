"""The shared test helpers: the one wait helper's result and timeout message, the socket dir, the port."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import (
    ChildLines,
    free_port,
    kill,
    refreshing,
    short_tmp_dir,
    terminate,
    wait_count,
    wait_for,
    wait_ready,
)


def test_wait_for_returns_the_first_truthy_value() -> None:
    seen = iter([0, None, "", "found"])
    assert wait_for(lambda: next(seen), timeout=5.0, interval=0.001) == "found"


def test_wait_for_names_what_it_waited_for_and_the_last_value() -> None:
    with pytest.raises(AssertionError) as failed:
        wait_for(lambda: [], 0.05, "the queue to fill")
    assert str(failed.value) == "timed out after 0.05s waiting for the queue to fill (last value: [])"


def test_wait_for_without_what_quotes_the_predicate_source() -> None:
    empty: dict[str, int] = {}
    with pytest.raises(AssertionError, match=r"waiting for .*empty\.get\(\"key\"\).*\(last value: None\)"):
        wait_for(lambda: empty.get("key"), timeout=0.05)


def test_wait_for_polls_until_the_deadline_at_its_interval() -> None:
    calls: list[float] = []

    def never() -> bool:
        calls.append(time.monotonic())
        return False

    with pytest.raises(AssertionError):
        wait_for(never, timeout=0.3, interval=0.1)
    assert calls[-1] - calls[0] >= 0.3
    assert all(b - a >= 0.1 for a, b in itertools.pairwise(calls))


def test_short_tmp_dir_fits_a_unix_socket_and_is_removed() -> None:
    with short_tmp_dir() as path:
        sock_path = os.path.join(path, "agent-12345678.sock")
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(sock_path)
        assert os.path.exists(sock_path)
    assert not os.path.exists(path)


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)) as server:
        assert server.getsockname()[1] == port


def test_sock_dir_fixture_is_an_empty_private_directory(sock_dir: str) -> None:
    assert os.path.isdir(sock_dir)
    assert os.listdir(sock_dir) == []
    assert os.stat(sock_dir).st_mode & 0o077 == 0


def _child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_child_lines_reads_lines_and_says_why_there_is_none() -> None:
    proc = _child("import sys; print('one'); sys.stderr.write('oops'); sys.stdin.readline()")
    lines = ChildLines(proc, "the child")
    try:
        assert lines.next(30) == "one"
        with pytest.raises(AssertionError, match=r"^no line from the child within 0\.05 s; stderr: "):
            lines.next(0.05)
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(30)
        wait_for(lambda: lines.stderr == "oops", 30)
        with pytest.raises(AssertionError, match=r"^the child exited \(0\); stderr: oops$"):
            lines.next(30)
    finally:
        kill(proc)


def test_wait_count_names_the_last_counts_seen_and_what_was_expected() -> None:
    counts = itertools.count()
    with pytest.raises(AssertionError) as failed:
        wait_count(lambda: next(counts), 1000, "tasks run", timeout=0.3)
    seen = [int(n) for n in str(failed.value).split("[")[1].split("]")[0].split(", ")]
    assert seen == list(range(seen[0], seen[0] + len(seen))) and 1 <= len(seen) <= 5, seen
    assert str(failed.value).endswith("], tasks run 1000")
    wait_count(lambda: 10, 10, "tasks run")


def test_refreshing_fetches_while_the_block_runs_and_stops_after() -> None:
    calls: list[float] = []
    with refreshing(lambda: calls.append(time.monotonic()), 0.01):
        wait_for(lambda: len(calls) >= 3, 10)
    stopped = len(calls)
    time.sleep(0.1)
    assert len(calls) == stopped


def test_terminate_stops_with_sigterm_and_kills_what_ignores_it() -> None:
    polite = _child("import sys; sys.stdin.read()")
    terminate(polite, 30)
    assert polite.returncode == -signal.SIGTERM
    ignore = "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    stubborn = _child(f"{ignore}; print('ready', flush=True); sys.stdin.read()")
    killed: list[bool] = []
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
        terminate(stubborn, 0.2, lambda: killed.append(True))
        assert stubborn.returncode == -signal.SIGKILL and killed == [True]
    finally:
        kill(polite)
        kill(stubborn)


def test_wait_ready_reads_the_ready_line_and_fails_on_an_early_exit() -> None:
    pipes = subprocess.PIPE
    code = "print('ready', flush=True); input()"
    ready = subprocess.Popen([sys.executable, "-c", code], stdin=pipes, stdout=pipes)
    gone = subprocess.Popen([sys.executable, "-c", "pass"], stdin=pipes, stdout=pipes)
    try:
        wait_ready(ready)
        # the end of its output or its exit, whichever wait_ready sees first
        with pytest.raises(AssertionError, match=r"^target (said b'' \(exit code|exited with 0 before)"):
            wait_ready(gone)
    finally:
        kill(ready)
        kill(gone)
