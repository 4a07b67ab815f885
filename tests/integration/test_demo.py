"""`perftop demo --no-tui`: the built-in demo service, seen through `perftop snapshot` and `perftop action`.
Every section of the snapshot must be populated by real work (real process, socket and SQLite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perftop.collectors.discovery import find_agent
from tests.helpers import run_perftop, short_tmp_dir

REPO = Path(__file__).resolve().parent.parent.parent


def perftop(*args: str, sock_dir: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    options = (*args, "--socket-dir", sock_dir)
    return run_perftop(*options, env=dict(os.environ), timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[int, str]]:
    """The demo service's PID and socket directory; the service is killed afterwards, whatever happens."""
    with short_tmp_dir() as sock_dir, tempfile.TemporaryFile("w+") as err:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PERFTOP")}
        env["PERFTOP_SOCKET_DIR"] = sock_dir
        proc = subprocess.Popen(
            [sys.executable, "-m", "perftop", "demo", "--no-tui"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        try:
            assert proc.stdout is not None
            pid = int(proc.stdout.readline().strip())
            assert pid == proc.pid, "the printed PID is not the service's"
            deadline = time.monotonic() + 60
            while find_agent(pid, sock_dir) is None:
                if proc.poll() is not None:
                    err.seek(0)
                    pytest.fail(f"the demo service exited with {proc.returncode}: {err.read()[-3000:]}")
                assert time.monotonic() < deadline, "the demo's agent never answered"
                time.sleep(0.1)
            yield pid, sock_dir
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


def missing_sections(snap: dict[str, Any], pid: int) -> list[str]:
    """The sections of a snapshot that are not (yet) populated as the demo should populate them."""
    missing = []
    system = snap.get("system") or {}
    if not (system.get("memory", {}).get("total_bytes", 0) > 0 and system.get("per_cpu_percent")):
        missing.append("system")
    if (snap.get("process") or {}).get("pid") != pid:
        missing.append("process")
    agent = snap.get("agent") or {}
    if agent.get("pid") != pid or agent.get("name") != "perftop-demo":
        missing.append("agent")
    timings = snap.get("timings") or {}
    api = {name: t for name, t in timings.items() if name.startswith("api.") and t["count"] > 0}
    if len(api) < 4 or not any(t["errors"] > 0 for t in api.values()):
        missing.append(f"timings (api.*: {sorted(api)})")
    if not any(c["value"] > 0 for c in (snap.get("counters") or {}).values()):
        missing.append("counters")
    if not snap.get("gauges"):
        missing.append("gauges")
    queries = snap.get("queries") or []
    if not queries or not any(q["n_plus_one"] for q in queries):
        missing.append("queries (with an N+1)")
    if not snap.get("slow_queries"):
        missing.append("slow_queries")
    pool = snap.get("pool") or {}
    if not pool.get("size"):
        missing.append("pool")
    gc = snap.get("gc") or {}
    if not (gc.get("collections") and sum(gc["collections"]) > 0):
        missing.append("gc")
    return missing


def test_snapshot_has_every_section_populated(demo: tuple[int, str]) -> None:
    pid, sock_dir = demo
    deadline = time.monotonic() + 90
    while True:
        result = perftop("snapshot", "--pid", str(pid), "--json", "--interval", "0.3", sock_dir=sock_dir)
        assert result.returncode == 0, result.stderr
        snap = json.loads(result.stdout)
        missing = missing_sections(snap, pid)
        if not missing:
            break
        assert time.monotonic() < deadline, f"still empty after 90 s: {missing}"
        time.sleep(0.5)
    assert any(name.startswith("api.") for name in snap["timings"])
    assert snap["agent"]["argv"][0].endswith("demo_service.py") or "perftop.launch.demo_service" in " ".join(
        snap["process"]["cmdline"]
    )


def test_threads_action(demo: tuple[int, str]) -> None:
    pid, sock_dir = demo
    if perftop("action", "--help", sock_dir=sock_dir).returncode != 0:
        pytest.skip("`perftop action` is not available in this build")
    result = perftop("action", "--pid", str(pid), "threads", "--json", sock_dir=sock_dir)
    assert result.returncode == 0, result.stderr
    threads = json.loads(result.stdout)
    assert isinstance(threads, list) and len(threads) >= 2
    for thread in threads:
        assert thread["name"] and isinstance(thread["ident"], int)
    stacks = [t["stack"] for t in threads if t["stack"]]
    assert stacks, "no thread has a stack"
    functions = {frame["function"] for stack in stacks for frame in stack}
    assert any("demo" in frame["file"] for stack in stacks for frame in stack), functions
