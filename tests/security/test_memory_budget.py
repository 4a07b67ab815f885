"""Memory snapshots never cost a large heap more than their budget, and tracing never outlives its use:
a snapshot past the block budget is refused with an estimate before anything is copied, and tracemalloc
stops by itself after its lease (the app's own `tracemalloc.is_tracing()` is the oracle)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from perftop.collectors.discovery import find_agent
from tests.helpers import run_perftop, wait_for

TARGET = str(Path(__file__).resolve().parent.parent / "targets" / "mem_grower.py")


class Grower:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()


@pytest.fixture
def grower(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Grower]:
    monkeypatch.setenv("PERFTOP_SOCKET_DIR", str(tmp_path / "sockets"))
    proc = subprocess.Popen(
        [sys.executable, TARGET], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    wait_for(lambda: find_agent(proc.pid) is not None, 10, "the agent to come up", interval=0.05)
    yield Grower(proc)
    proc.kill()
    proc.wait(10)


def memory(pid: int, *args: str) -> subprocess.CompletedProcess[str]:
    return run_perftop("action", "--pid", str(pid), "memory", *args, env=dict(os.environ))


def test_a_snapshot_of_a_large_traced_heap_is_refused_with_an_estimate(grower: Grower) -> None:
    pid = grower.proc.pid
    first = memory(pid, "--json")  # starts tracing: nothing traced yet, a cheap baseline
    assert first.returncode == 0, first.stderr
    assert grower.ask("grow 100000") == "ok"  # 100k lists: about 300k traced blocks, past the 200k budget
    ticks = int(grower.ask("tick"))
    refused = memory(pid, "--json")
    assert refused.returncode == 1 and refused.stdout == ""
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("perftop: "), refused.stderr
    assert "traces about" in lines[0] and "refused (budget 200,000 blocks" in lines[0]
    estimate = int(lines[0].split("traces about ")[1].split(" blocks")[0].replace(",", ""))
    assert int(grower.ask("tick")) > ticks  # the app ran on
    assert grower.ask("tracing") == "True"  # refusing the snapshot did not stop the user's tracing
    allowed = memory(pid, "--json", "--max-blocks", "100000000", "--top", "5")
    assert allowed.returncode == 0, allowed.stderr
    doc = json.loads(allowed.stdout)
    # The estimate (from tracemalloc's own memory) against the exact count of the snapshot that followed.
    assert 0.7 * doc["blocks"] <= estimate <= 1.3 * doc["blocks"], (estimate, doc["blocks"])
    assert doc["blocks"] >= 200_000 and doc["diff"][0]["file"].endswith("mem_grower.py")


def test_tracing_stops_by_itself_after_its_lease(grower: Grower) -> None:
    pid = grower.proc.pid
    started = memory(pid, "--json", "--keep", "10")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["stops_at"] > time.time()
    assert grower.ask("tracing") == "True"
    stats = run_perftop("snapshot", "--pid", str(pid), "--json", env=dict(os.environ), timeout=60)
    assert stats.returncode == 0, stats.stderr
    wait_for(
        lambda: grower.ask("tracing") != "True",
        30,
        "tracemalloc to stop (30 s after a 10 s lease)",
        interval=0.5,
    )
