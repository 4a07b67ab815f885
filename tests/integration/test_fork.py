"""Forked processes are first-class: after a fork the child's agent, socket, thread ids and CPU clocks are
its own, every action answers, and idle detection works as in a plain process.

Real `os.fork` (200 forks while the parent records and a viewer polls it), multiprocessing with fork and
forkserver, and a real gunicorn with 2 workers under `perftop run`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from perftop.collectors.agent_client import AgentClient, AgentError
from perftop.collectors.discovery import find_agent
from perftop.wire import paths
from tests.helpers import free_port, short_tmp_dir, terminate, wait_for
from tests.targets.agent_harness import ROOT, Target, target_env

TARGETS = Path(__file__).resolve().parents[1] / "targets"
FORK_TARGET = TARGETS / "lc_fork_target.py"
ACTION_TIMEOUT_S = 30.0


@pytest.fixture
def target(monkeypatch: pytest.MonkeyPatch) -> Iterator[Target]:
    """`lc_fork_target.py` with PERFTOP_SOCKET_DIR in its environment (its forkserver serves there too)."""
    with short_tmp_dir() as tmp:
        socks = os.path.join(tmp, "socks")
        monkeypatch.setattr("tests.targets.agent_harness.target_env", lambda: _env(socks))
        with Target(socks, script=FORK_TARGET) as t:
            yield t


def _env(socks: str) -> dict[str, str]:
    env = target_env()
    env["PERFTOP_SOCKET_DIR"] = socks
    return env


@contextlib.contextmanager
def polling(path: str) -> Iterator[list[int]]:
    """A viewer polling `path`'s stats as fast as it is answered, for as long as the block runs."""
    stop = threading.Event()
    answered = [0]
    errors: list[str] = []

    def poll() -> None:
        with AgentClient(path, timeout=ACTION_TIMEOUT_S) as client:
            while not stop.is_set():
                try:
                    client.call("stats", {"window": 10})
                    answered[0] += 1
                except AgentError as exc:
                    errors.append(str(exc))
                    return

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join(ACTION_TIMEOUT_S)
    assert not errors, errors


def tids(pid: int) -> set[int]:
    return {int(t) for t in os.listdir(f"/proc/{pid}/task")}


def check_worker(pid: int, socket_dir: str | None = None) -> dict[str, Any]:
    """The worker's own agent answers info, stats and threads; its thread dump names its own native
    ids (the main thread's is the worker's pid). Returns the stats."""
    path = wait_for(lambda: find_agent(pid, socket_dir), timeout=ACTION_TIMEOUT_S)
    with AgentClient(path, timeout=ACTION_TIMEOUT_S) as client:
        assert client.call("info")["pid"] == pid
        stats = client.call("stats")
        dump = client.call("action", {"name": "threads"}, timeout=ACTION_TIMEOUT_S)
    main = [t for t in dump if t["main"]]
    assert len(main) == 1 and main[0]["native_id"] == pid, main
    natives = {t["native_id"] for t in dump if t["native_id"] is not None}
    assert natives <= tids(pid), (natives, tids(pid))
    return dict(stats)


def cli_thread_dump(pid: int, socket_dir: str) -> list[dict[str, Any]]:
    """`perftop action --pid PID threads --json`, as the user runs it."""
    cmd = [sys.executable, "-m", "perftop", "action", "--pid", str(pid), "threads", "--json"]
    env = {**target_env(), "PERFTOP_SOCKET_DIR": socket_dir}
    result = subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


def test_200_forks_while_recording_and_polled_every_child_answers(target: Target) -> None:
    with polling(target.socket) as answered:
        for batch in range(10):
            pids = [int(p) for p in target.cmd("fork 20", timeout=60).split()[1:]]
            target.children.extend(pids)
            try:
                for pid in pids:
                    stats = check_worker(pid)
                    # The child's numbers are its own: none of the parent's recording came with it.
                    assert "parent.work" not in stats["timings"]
                if batch == 0:  # and through the CLI (forked right after start, as in the report)
                    dump = cli_thread_dump(pids[0], target.socket_dir)
                    assert [t["native_id"] for t in dump if t["main"]] == [pids[0]]
            finally:
                assert target.cmd("kill " + " ".join(map(str, pids)), timeout=60) == "killed"
                for pid in pids:
                    target.children.remove(pid)
        assert answered[0] > 0
    with AgentClient(target.socket) as client:
        assert client.call("info")["pid"] == target.pid
    # Children killed with SIGKILL leave their sockets; the parent's is untouched.
    assert os.path.exists(target.socket)


def test_a_fork_that_execs_leaves_no_socket(target: Target) -> None:
    """subprocess with a preexec_fn runs the at-fork hooks in its child before the exec: the child must
    not make a socket (it would be left behind, named after a process that is no longer Python)."""
    (pid,) = (int(p) for p in target.cmd("preexec").split()[1:])
    try:
        wait_for(lambda: psutil.Process(pid).name() == "sleep")  # exec'd
        # A forked Python child serves within a moment (test above); give this one far longer.
        (forked,) = (int(p) for p in target.cmd("fork 1").split()[1:])
        target.children.append(forked)
        wait_for(lambda: os.path.exists(paths.socket_path(forked, target.socket_dir)), timeout=30)
        assert not os.path.exists(paths.socket_path(pid, target.socket_dir))
    finally:
        target.cmd(f"kill {pid}")


def profile_main(path: str) -> dict[str, Any]:
    with AgentClient(path, timeout=ACTION_TIMEOUT_S) as client:
        params = {"name": "profile", "seconds": 2, "threads": "main"}
        return dict(client.call("action", params, timeout=ACTION_TIMEOUT_S))


def test_idle_detection_in_a_forked_child_is_as_right_as_in_its_parent(target: Target) -> None:
    (pid,) = (int(p) for p in target.cmd("fork 1").split()[1:])
    target.children.append(pid)
    child_socket = paths.socket_path(pid, target.socket_dir)
    wait_for(lambda: os.path.exists(child_socket), timeout=ACTION_TIMEOUT_S)
    # The parent's main thread burns CPU meanwhile: a child reading its parent's CPU clock (the
    # parent's thread id) would take its own sleeping main thread for a running one.
    assert target.proc.stdin is not None
    target.proc.stdin.write("spin 6\n")
    target.proc.stdin.flush()
    child = profile_main(child_socket)
    assert target.read_line(timeout=60) == "spun"
    parent = profile_main(target.socket)
    # Oracle: the child's main thread only ever sleeps (time.sleep), and so does the parent's once its
    # spin is over (reading stdin).
    for who, profile in (("child", child), ("parent", parent)):
        assert profile["samples"] > 0, (who, profile)
        assert profile["idle_samples"] >= 0.9 * profile["samples"], (who, profile)


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_multiprocessing_workers_serve_their_own_agents(target: Target, method: str) -> None:
    pids = [int(p) for p in target.cmd(f"mp {method} 2", timeout=60).split()[1:]]
    try:
        for pid in pids:
            stats = check_worker(pid)
            wait_for(lambda p=pid: check_worker(p)["timings"].get("child.work"), timeout=ACTION_TIMEOUT_S)
            assert "parent.work" not in stats["timings"]
    finally:
        target.cmd("kill " + " ".join(map(str, pids)), timeout=60)


def test_gunicorn_workers_under_perftop_run_name_their_own_threads() -> None:
    pytest.importorskip("gunicorn")
    with short_tmp_dir() as tmp:
        socks = os.path.join(tmp, "socks")
        env = {**target_env(), "PERFTOP_SOCKET_DIR": socks}
        port = free_port()
        cmd = [sys.executable, "-m", "perftop", "run", "--", sys.executable, "-m", "gunicorn", "-w", "2"]
        cmd += ["-b", f"127.0.0.1:{port}", "--chdir", str(TARGETS), "lc_wsgi:app"]
        proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stderr=subprocess.PIPE, text=True)
        try:

            def workers() -> list[int]:
                try:
                    kids = psutil.Process(proc.pid).children()
                except psutil.Error:
                    return []
                return sorted(k.pid for k in kids) if len(kids) == 2 else []

            pids = wait_for(workers, timeout=60)
            for pid in pids:
                check_worker(pid, socks)
            check_worker(proc.pid, socks)  # the arbiter too
        finally:
            terminate(proc, 30)
            if proc.stderr is not None:
                proc.stderr.close()
