"""A `multiprocessing.Pool` started by spawn or forkserver under `perftop run` is one service, like a fork
pool (tests/integration/test_prefork.py covers fork): its workers are fresh interpreters whose agents
`perftop run`'s bootstrap starts, found under the program's PID (forkserver's workers are its
grandchildren), merged, reached by actions, and kept with their final stats when the pool recycles them.

Oracles: the tasks the program ran (merged counts), psutil's list of the program's descendants (the
tree, the fan-out), the workers' final stats files on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil
import pytest

from perftop.collectors.agent_view import AgentWatcher
from perftop.collectors.discovery import find_child_agents
from tests.helpers import perftop_json, refreshing, wait_count, wait_for
from tests.targets.pool_client import prefork_pool, run_tasks

TARGETS = Path(__file__).resolve().parent.parent / "targets"
TASKS = 40
PER_WORKER = 5
"""The pool's maxtasksperchild (tests/targets/prefork_pool.py)."""


def _count(watcher: AgentWatcher, pid: int) -> tuple[int, tuple[int, ...]]:
    view = watcher.fetch(pid, None)
    assert view is not None
    return int(view.timings.get("http POOL /task", {}).get("count", 0)), view.gone_pids


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_spawn_or_forkserver_pool_is_one_service_with_exact_counts(tmp_path: Path, method: str) -> None:
    sockets = tmp_path / "sockets"
    env = {**os.environ, "PERFTOP_SOCKET_DIR": str(sockets)}
    with prefork_pool(env, TASKS, method) as pool:
        # every Python descendant runs an agent (the pool's workers, and the helpers multiprocessing
        # started: its resource tracker, the fork server)
        descendants = {p.pid for p in psutil.Process(pool.pid).children(recursive=True)}
        wait_for(
            lambda: set(find_child_agents(pool.pid, str(sockets))) == descendants,
            30,
            "every agent",
            interval=0.1,
        )
        assert len(descendants) >= 3
        doc = perftop_json("snapshot", "--pid", str(pool.pid), "--interval", "0.2", "--json", env=env)
        tree = doc["process"]["tree"]
        assert {w["pid"] for w in tree["workers"]} == descendants
        assert all(w["has_agent"] for w in tree["workers"])
        threads = perftop_json("action", "--pid", str(pool.pid), "threads", "--json", env=env)
        assert {int(p) for p in threads["per_pid"]} == descendants

        watcher = AgentWatcher(str(sockets))
        base, _ = _count(watcher, pool.pid)  # the first 3 tasks
        # a viewer refreshing while the pool recycles its workers
        with refreshing(lambda: watcher.fetch(pool.pid, None), 0.2):
            run_tasks(pool)
        wait_count(lambda: _count(watcher, pool.pid)[0], base + TASKS, "tasks run")
        _, gone = _count(watcher, pool.pid)
        assert len(gone) >= TASKS // PER_WORKER - 3  # 3 workers at most are still live
        watcher.close()
        finals = list(sockets.glob("*.final"))
        assert len(finals) >= len(gone) and all(f.stat().st_mode & 0o777 == 0o600 for f in finals)
