"""`perftop run -- python SCRIPT`: the agent in an unmodified program (and its Python children), with its
exit code, signals and stdio untouched. Real processes, real sockets, real SQLite."""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from perftop.collectors.discovery import find_agent, find_child_agents
from perftop.launch.runner import agent_env
from perftop.wire import paths
from tests.helpers import run_perftop, wait_for

REPO = Path(__file__).resolve().parent.parent.parent
TARGETS = REPO / "tests" / "targets"


def wait_gone(path: str, timeout: float = 10.0) -> None:
    wait_for(lambda: not os.path.exists(path), timeout, f"{path} to go", interval=0.05)


def run_env(sock_dir: str, **extra: str) -> dict[str, str]:
    """Our virtualenv's `python` first on PATH, agent sockets in `sock_dir`, no inherited PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PERFTOP", "PERFTOP_NAME")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    env["PERFTOP_SOCKET_DIR"] = sock_dir
    env.update(extra)
    return env


def perftop_run(
    *cmd: str, env: dict[str, str], options: tuple[str, ...] = (), **kw: Any
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "perftop", "run", *options, "--", *cmd],
        env=env,
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        **kw,
    )


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


def perftop_cli(*args: str, sock_dir: str) -> subprocess.CompletedProcess[str]:
    """`perftop ARGS...` run to its end, output captured."""
    return run_perftop(*args, env=run_env(sock_dir), timeout=60, cwd=REPO)


def snapshot(pid: int, sock_dir: str) -> dict[str, Any]:
    result = perftop_cli("snapshot", "--pid", str(pid), "--json", "--interval", "0.2", sock_dir=sock_dir)
    assert result.returncode == 0, result.stderr
    snap: dict[str, Any] = json.loads(result.stdout)
    return snap


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def test_sqlalchemy_program_is_seen_and_its_stdio_and_exit_code_pass_through(sock_dir: str) -> None:
    script = str(TARGETS / "run_sqla.py")
    proc = perftop_run(
        "python", script, "3", env=run_env(sock_dir), options=("--name", "billing"), stdin=subprocess.PIPE
    )
    try:
        assert read_line(proc) == "ready"
        socket_path = wait_for(
            lambda: find_agent(proc.pid, sock_dir), 30.0, "the agent's socket", interval=0.05
        )
        assert os.path.dirname(socket_path) == sock_dir
        snap = snapshot(proc.pid, sock_dir)
        agent = snap["agent"]
        assert agent is not None and agent["pid"] == proc.pid
        assert agent["argv"] == [script, "3"]
        assert agent["name"] == "billing"
        fingerprints = [q["fingerprint"] for q in snap["queries"]]
        inserts = [q for q in snap["queries"] if "insert into run_items" in q["fingerprint"].lower()]
        assert inserts and inserts[0]["count"] == 20, fingerprints
        assert any("select count(*) from run_items" in f.lower() for f in fingerprints), fingerprints
        assert proc.stdin is not None
        proc.stdin.write("hello there\n")
        proc.stdin.flush()
        assert read_line(proc) == "echo: hello there"
        proc.stdin.close()
        assert proc.wait(30) == 3
        assert not os.path.exists(socket_path), "the socket outlived the program"
    finally:
        kill(proc)


def test_exit_code_zero_and_output(sock_dir: str) -> None:
    proc = perftop_cli("run", "--", "python", "-c", "print('hi')", sock_dir=sock_dir)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "hi\n", "")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_killed_by_a_signal_like_the_program_alone(sig: signal.Signals, sock_dir: str) -> None:
    script = str(TARGETS / "run_wait.py")
    codes = []
    for via_perftop in (False, True):
        env = run_env(sock_dir)
        if via_perftop:
            proc = perftop_run("python", script, env=env, stderr=subprocess.DEVNULL)
        else:
            proc = subprocess.Popen(
                [sys.executable, script],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        try:
            assert read_line(proc) == "ready"
            if via_perftop:
                wait_for(
                    functools.partial(find_agent, proc.pid, sock_dir),
                    30.0,
                    "the agent's socket",
                    interval=0.05,
                )
            proc.send_signal(sig)
            codes.append(proc.wait(30))
        finally:
            kill(proc)
    assert codes[0] == codes[1], codes
    assert codes[1] == -sig


def probe(env: dict[str, str]) -> dict[str, Any]:
    proc = perftop_run("python", str(TARGETS / "run_probe.py"), env=env)
    try:
        out: dict[str, Any] = json.loads(read_line(proc))
        assert proc.wait(30) == 0
    finally:
        kill(proc)
    return out


def test_existing_sitecustomize_still_runs(sock_dir: str, tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['RUN_CHAINED_MARK'] = 'chained'\n")
    out = probe(run_env(sock_dir, PYTHONPATH=str(tmp_path)))
    assert out["chained"] == "chained"
    assert "_PerftopFinder" in out["finders"]
    disabled = probe(run_env(sock_dir, PYTHONPATH=str(tmp_path), PERFTOP="0"))
    assert disabled["chained"] == "chained"
    assert out["sys_path"] == disabled["sys_path"], "the agent changed the program's sys.path"


def test_perftop_0_disables_it(sock_dir: str) -> None:
    out = probe(run_env(sock_dir, PERFTOP="0"))
    assert out["perftop_loaded"] is False
    assert "_PerftopFinder" not in out["finders"] and "_SQLAlchemyHook" not in out["finders"]
    assert os.listdir(sock_dir) == []


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_multiprocessing_child_has_its_own_agent(method: str, sock_dir: str) -> None:
    proc = perftop_run(
        "python", str(TARGETS / "run_mp.py"), method, env=run_env(sock_dir), stdin=subprocess.PIPE
    )
    child = 0
    try:
        line = read_line(proc)
        assert line.startswith("child "), line
        child = int(line.split()[1])
        parent_sock = wait_for(
            lambda: find_agent(proc.pid, sock_dir), 30.0, "the parent's agent", interval=0.05
        )
        child_sock = wait_for(lambda: find_agent(child, sock_dir), 30.0, "the child's agent", interval=0.05)
        assert child_sock != parent_sock
        assert os.path.basename(child_sock) == f"{child}.sock"
        assert child in wait_for(
            lambda: find_child_agents(proc.pid, sock_dir), 30.0, "child discovery", interval=0.05
        )
        assert snapshot(child, sock_dir)["agent"]["pid"] == child
        assert proc.stdin is not None
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        assert read_line(proc) == "joined 0"
        assert proc.wait(30) == 0
        wait_gone(child_sock)
    finally:
        if child and paths.pid_alive(child):
            os.kill(child, signal.SIGKILL)
        kill(proc)


def test_unknown_command_is_a_usage_error(sock_dir: str) -> None:
    result = perftop_cli("run", "--", "no-such-command-xyz", "arg", sock_dir=sock_dir)
    assert result.returncode == 2
    assert result.stderr == "perftop: command not found: no-such-command-xyz\n"


def cpython(minor: int) -> str | None:
    """A CPython 3.<minor> on this machine (pyenv, then PATH), or None."""
    if sys.version_info[:2] == (3, minor):
        return sys.executable
    pyenv = os.environ.get("PYENV_ROOT", "/root/.pyenv")
    for exe in [*sorted(glob.glob(f"{pyenv}/versions/3.{minor}.*/bin/python3.{minor}")), f"python3.{minor}"]:
        found = shutil.which(exe)
        if found is not None:
            return found
    return None


@pytest.mark.parametrize("minor", [10, 11, 12, 13])
def test_agent_on_every_cpython_keeps_the_main_thread_known(minor: int, sock_dir: str) -> None:
    """The agent starts in a thread while the program starts; where that thread imports threading first,
    Python before 3.13 took it for the main thread (asyncio, signal helpers and the thread dump rely on
    threading.main_thread())."""
    exe = cpython(minor)
    if exe is None:
        pytest.skip(f"no CPython 3.{minor} on this machine (looked in pyenv and PATH)")
    proc = perftop_run(exe, str(TARGETS / "run_versions.py"), env=run_env(sock_dir), stdin=subprocess.PIPE)
    try:
        assert read_line(proc) == "main thread known: True"
        assert read_line(proc) == "ready"
        snap = snapshot(proc.pid, sock_dir)
        assert snap["agent"]["python"].startswith(f"3.{minor}.")
        assert snap["timings"]["versions.work"]["count"] == 100
        threads = perftop_cli("action", "--pid", str(proc.pid), "threads", "--json", sock_dir=sock_dir)
        assert threads.returncode == 0, threads.stderr
        names = {t["name"] for t in json.loads(threads.stdout)}
        assert "MainThread" in names, names
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(30) == 0
    finally:
        kill(proc)


def test_the_program_gets_default_sigpipe_and_sigxfsz(sock_dir: str) -> None:
    """Python ignores SIGPIPE and SIGXFSZ and exec keeps ignored signals ignored: perftop resets them, so
    `perftop run -- cmd | head` ends cmd as a shell would."""
    proc = perftop_cli("run", "--", "grep", "SigIgn", "/proc/self/status", sock_dir=sock_dir)
    assert proc.returncode == 0, proc.stderr
    ignored = int(proc.stdout.split()[1], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), proc.stdout
    assert not ignored & (1 << (signal.SIGXFSZ - 1)), proc.stdout


def test_python_dash_m_programs_start_cleanly_every_time(sock_dir: str) -> None:
    """`python -m` runs runpy, which imports importlib.util in the main thread while the agent's start-up
    thread imports importlib: left to race, 1 start in 30 got a broken importlib and died with
    "NameError: name 'sys' is not defined" (the demo did). 100 starts: about a 95% chance to see it."""
    env = agent_env(None, None, base=run_env(sock_dir))  # what `perftop run` execs with, minus the exec
    failures = []
    for _ in range(100):
        proc = subprocess.run(
            [sys.executable, "-m", "tests.targets.run_dash_m"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if proc.returncode != 0 or proc.stderr:
            failures.append((proc.returncode, proc.stderr[-500:]))
    assert not failures, f"{len(failures)} of 100 starts failed; first: {failures[0]}"


def test_a_python_dash_m_program_is_named_by_its_module(sock_dir: str) -> None:
    """While the interpreter starts, `sys.argv[0]` of `python -m http.server` is "-m": the agent, started
    then, names the program by its module, as `ps` users would."""
    proc = perftop_run("python", "-m", "http.server", "--bind", "127.0.0.1", "0", env=run_env(sock_dir))
    try:
        wait_for(lambda: find_agent(proc.pid, sock_dir), 30.0, "the agent's socket", interval=0.05)
        assert snapshot(proc.pid, sock_dir)["agent"]["name"] == "http.server"
    finally:
        kill(proc)
