"""Attaching to a parent whose workers run agents: one merged view, sketches merged, never averaged."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.helpers import perftop_json, run_perftop
from tests.targets.workers_client import workers_app


def test_snapshot_of_a_parent_merges_its_workers(tmp_path: Path) -> None:
    env = {**os.environ, "PERFTOP_SOCKET_DIR": str(tmp_path / "sockets")}
    with workers_app(3, env) as (parent, workers):
        doc = perftop_json(
            "snapshot", "--pid", str(parent.pid), "--interval", "0.1", "--json", env=env, timeout=60
        )
        alone = run_perftop(
            "snapshot", "--pid", str(parent.pid), "--no-children", "--json", env=env, timeout=60
        )
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
