"""perftop in a real terminal attached to the master of a real gunicorn (3 workers, under `perftop run`):
the worker table lists the three (psutil's children of the master), and a forced GC from the master runs
in every worker, each one's figures in a column of its own."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.tmux import Tmux
from tests.integration.test_frameworks import CONTROL
from tests.integration.test_prefork import WORKERS, Server, start_server, stop_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path, *CONTROL)
    yield s
    stop_server(s)


def _worker_rows(screen: str, workers: list[int]) -> dict[int, str]:
    """The worker table's line of each worker (the line that starts with its PID)."""
    rows: dict[int, str] = {}
    for line in screen.splitlines():
        cells = line.strip("│ ").split()
        if cells and cells[0].isdigit() and int(cells[0]) in workers:
            rows[int(cells[0])] = line
    return rows


def test_attached_to_the_master_the_workers_are_listed_and_gc_runs_in_each(
    server: Server, tmp_path: Path
) -> None:
    workers = server.workers()
    assert len(workers) == WORKERS
    command = [
        sys.executable,
        "-m",
        "perftop",
        "--pid",
        str(server.master),
        "--socket-dir",
        server.socket_dir,
    ]
    term = Tmux(command, tmp_path, 120, 40)
    try:
        # the tree's title, and a row per worker, each with its agent found
        screen = term.wait_screen(
            lambda s: (
                f"tree of {WORKERS + 1}" in s
                # "agent", not "no agent": the workers' agents answered (only then do actions ask where)
                and all(
                    " agent" in row and "no agent" not in row for row in _worker_rows(s, workers).values()
                )
                and len(_worker_rows(s, workers)) == WORKERS
            ),
            timeout=60,
        )
        assert f"process {server.master}" in screen
        term.send("g")
        term.wait_screen(lambda s: "Run gc in:" in s and f"all {WORKERS} workers" in s)
        term.send("Enter")
        screen = term.wait_screen(
            lambda s: all(str(p) in s for p in workers) and "rss change" in s, timeout=60
        )
        assert f"forced GC in {WORKERS} workers" in screen
        assert f"forced GC · {WORKERS} workers" in screen  # the pane's title says where it ran
        head = next(line for line in screen.splitlines() if " all " in line and str(workers[0]) in line)
        assert head.strip("│ ").split() == ["all", *(str(p) for p in workers)]
        collected = next(line for line in screen.splitlines() if line.strip("│ ").startswith("collected"))
        assert len(collected.strip("│ ").split()) == 2 + WORKERS  # the label, all, one per worker
        term.send("q")
        assert term.wait_exit() == 0
    finally:
        term.kill()
    assert server.proc.poll() is None and server.workers() == workers  # nothing was disturbed
