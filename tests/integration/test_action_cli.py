"""`perftop action` against a real instrumented process: profile, gc, memory, threads, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from perftop.collectors.agent_client import AgentClient
from perftop.collectors.discovery import find_agent
from tests.helpers import run_perftop, wait_for

TARGET = str(Path(__file__).resolve().parent.parent / "targets" / "cli_hot_app.py")


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[subprocess.Popen[str]]:
    monkeypatch.setenv("PERFTOP_SOCKET_DIR", str(tmp_path / "sockets"))
    proc = subprocess.Popen(
        [sys.executable, TARGET], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(tmp_path)
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    wait_for(lambda: find_agent(proc.pid) is not None, 10, "the agent to come up", interval=0.05)
    yield proc
    if proc.poll() is None:
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def action(pid: int, *args: str) -> subprocess.CompletedProcess[str]:
    return run_perftop("action", "--pid", str(pid), *args, env=dict(os.environ))


def test_profile_finds_the_hot_function_and_saves_folded_stacks(
    target: subprocess.Popen[str], tmp_path: Path
) -> None:
    out = tmp_path / "profile.folded"
    result = action(target.pid, "profile", "--seconds", "1.5", "--json", "-o", str(out))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["top"][0]["function"] == "burn_cpu_here"
    lines = out.read_text().splitlines()
    assert sum(int(line.rsplit(" ", 1)[1]) for line in lines) == doc["samples"]
    assert any("burn_cpu_here" in line for line in lines)
    text = action(target.pid, "profile", "--seconds", "1")
    assert text.returncode == 0 and "burn_cpu_here" in text.stdout.splitlines()[3]


def works(pid: int) -> int:
    """How many iterations the target's worker has finished (its `work` timing's count)."""
    path = find_agent(pid)
    assert path is not None
    with AgentClient(path) as client:
        stats = client.call("stats", {"window": None})
    return int(stats["timings"]["work"]["sketch"]["count"]) if "work" in stats["timings"] else 0


def test_gc_threads_and_memory_diff(target: subprocess.Popen[str]) -> None:
    gc = json.loads(action(target.pid, "gc", "--json").stdout)
    assert {"collected", "collected_by_generation", "rss_before_bytes", "counts_after"} <= set(gc)
    threads = json.loads(action(target.pid, "threads", "--json").stdout)
    by_name = {t["name"]: t for t in threads}
    assert by_name["idle-waiter"]["stack"][-1]["function"] in ("wait", "Event.wait", "Condition.wait")
    assert any(f["function"] == "waiter" for f in by_name["idle-waiter"]["stack"])
    first = json.loads(action(target.pid, "memory", "--json").stdout)
    assert first["tracing"] is True and first["started"] is True
    # A few leaking iterations (300 new objects each from that one line). Traced, one iteration of the
    # allocation-heavy burner can take over a second on a loaded machine: count them, do not guess.
    done = works(target.pid)
    wait_for(lambda: works(target.pid) >= done + 3, 30, "the target's worker to make progress", interval=0.1)
    second = json.loads(action(target.pid, "memory", "--json").stdout)
    source = Path(TARGET).read_text().splitlines()
    leak_line = next(n for n, line in enumerate(source, 1) if "LEAK.extend" in line)
    assert (Path(second["diff"][0]["file"]).name, second["diff"][0]["line"]) == ("cli_hot_app.py", leak_line)
    stopped = json.loads(action(target.pid, "memory", "--stop", "--json").stdout)
    assert stopped["tracing"] is False


def test_errors_are_one_line(target: subprocess.Popen[str]) -> None:
    no_fp = action(target.pid, "explain")
    assert no_fp.returncode == 2 and no_fp.stderr.startswith("perftop: explain needs --fingerprint")
    plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        no_agent = action(plain.pid, "gc")
    finally:
        plain.kill()
        plain.wait()
    assert no_agent.returncode == 2
    assert "has no perftop agent" in no_agent.stderr and "Traceback" not in no_agent.stderr
    bad = action(target.pid, "nonsense")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
