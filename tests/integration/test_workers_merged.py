"""Attaching to a parent whose workers run agents: one merged view, sketches merged, never averaged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TARGET = str(Path(__file__).resolve().parent.parent / "targets" / "workers_app.py")


def test_snapshot_of_a_parent_merges_its_workers(tmp_path: Path) -> None:
    env = {**os.environ, "PERFTOP_SOCKET_DIR": str(tmp_path / "sockets")}
    parent = subprocess.Popen(
        [sys.executable, TARGET, "3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline().split()
        assert line[0] == "ready", line
        workers = sorted(int(p) for p in line[1:])
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "perftop",
                "snapshot",
                "--pid",
                str(parent.pid),
                "--interval",
                "0.1",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        alone = subprocess.run(
            [
                sys.executable,
                "-m",
                "perftop",
                "snapshot",
                "--pid",
                str(parent.pid),
                "--no-children",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    finally:
        if parent.poll() is None:
            assert parent.stdin is not None
            parent.stdin.write("\n")
            parent.stdin.flush()
            parent.wait(20)
    assert sorted(doc["agent"]["merged_pids"]) == workers
    request = doc["timings"]["request"]
    assert request["count"] == 3000
    # values 10, 20 and 30 ms, 1000 each: the merged median is 20 ms (a sketch bucket, within 1%)
    assert abs(request["p50_ms"] - 20.0) / 20.0 < 0.01
    assert abs(request["max_ms"] - 30.0) / 30.0 < 0.01
    assert abs(request["p99_ms"] - 30.0) / 30.0 < 0.01
    assert doc["counters"]["handled"]["value"] == 3000
    # without children the parent has no agent of its own
    assert alone.returncode == 0 and json.loads(alone.stdout)["agent"] is None
