"""`perftop run` and `perftop demo`: start Python programs with the agent inside, with no code change."""

from __future__ import annotations

import os
import stat
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Sequence

# `perftop run` execs the program as soon as it can, so this module imports next to nothing (subprocess,
# shutil, typing and time would cost it milliseconds; `perftop demo` imports what it needs itself).
BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.realpath(__file__)), "_bootstrap")
"""Holds the `sitecustomize.py` that starts the agent in every Python process that has it on its path."""


def agent_env(name: str | None, slow_ms: float | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that makes Python programs (and their Python children) start perftop's agent."""
    env = dict(os.environ if base is None else base)
    old = env.get("PYTHONPATH", "")
    parts = [p for p in old.split(os.pathsep) if p and p != BOOTSTRAP_DIR]
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR, *parts])
    if name:
        env["PERFTOP_NAME"] = name
    if slow_ms is not None:
        env["PERFTOP_SLOW_MS"] = repr(slow_ms)
    return env


def resolve_command(command: Sequence[str]) -> list[str]:
    """The command with its program found on PATH; ValueError (one line) where it cannot be run."""
    cmd = list(command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise ValueError("no command given: perftop run [--name NAME] -- python app.py ...")
    program = which(cmd[0])
    if program is None:
        raise ValueError(f"command not found: {cmd[0]}")
    return [program, *cmd[1:]]


def which(name: str) -> str | None:
    """Like shutil.which (an executable file; `name` with a slash is taken as a path), without shutil."""
    candidates = [name] if os.sep in name else [os.path.join(d or ".", name) for d in os.get_exec_path()]
    for path in candidates:
        try:
            if stat.S_ISREG(os.stat(path).st_mode) and os.access(path, os.X_OK):
                return path
        except OSError:
            continue
    return None


def exec_with_agent(command: Sequence[str], name: str | None, slow_ms: float | None) -> None:
    """Replace this process with `command` (same PID, so signals, exit code and stdio pass through).

    The program gets the argv it was given (argv[0] as typed, as a shell would pass it) and the signal
    dispositions a shell would give it: Python ignores SIGPIPE and SIGXFSZ, and exec keeps ignored
    signals ignored, so they are reset first (as subprocess does with restore_signals).
    """
    cmd = list(command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    program = resolve_command(cmd)[0]
    import _signal  # type: ignore[import-not-found]  # what `signal` wraps, without its enum (10 ms)

    for signame in ("SIGPIPE", "SIGXFSZ"):
        sig = getattr(_signal, signame, None)
        if sig is not None:
            _signal.signal(sig, _signal.SIG_DFL)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(program, cmd, agent_env(name, slow_ms))


def demo_command(threads: int, url: str | None = None, parent: int | None = None) -> list[str]:
    """The demo service's command line; with `parent`, it stops by itself once that process is gone."""
    return [
        sys.executable,
        "-m",
        "perftop.launch.demo_service",
        "--threads",
        str(threads),
        *(["--url", url] if url else []),
        *(["--parent", str(parent)] if parent else []),
    ]


def start_demo(threads: int, log_path: str, url: str | None = None) -> subprocess.Popen[bytes]:
    """Start the demo service in the background with the agent; its output goes to `log_path`.

    It stops with us: by `stop_process` when the TUI quits, or by itself when this process is gone
    however it ended (a closed terminal's SIGHUP, SIGKILL), rather than running on unwatched."""
    import subprocess

    with open(log_path, "ab") as log:
        return subprocess.Popen(
            demo_command(threads, url, parent=os.getpid()),
            env=agent_env("perftop-demo", 25.0),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_agent(pid: int, socket_dir: str | None, timeout: float = 20.0) -> bool:
    """Wait until the agent of `pid` answers on its socket; False after `timeout` or if `pid` died."""
    import time

    from perftop.collectors.agent_client import find_agent

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if find_agent(pid, socket_dir) is not None:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.05)
    return False


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    import subprocess

    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
