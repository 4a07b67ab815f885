"""The actions pane attached to a gunicorn master: each worker's result beside the others.

A real gunicorn (3 workers) under `perftop run`; the keys run real actions in every worker (the target
picker's default). Oracles: psutil's children of the master (the columns and sections), the worker that
answered each request (its PID is in the answer: the memory each one grew, the CPU loop each one ran),
the OS thread id of each worker's main thread (its PID), each worker's own result (`per_pid`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable

from perftop.render.actions import per_worker
from perftop.render.units import fmt_count
from perftop.tui.app import PerftopApp
from perftop.tui.panes.actions import ActionsPane
from perftop.tui.panes.process import ProcessPane
from perftop.tui.screens.target_picker import TargetPicker
from perftop.tui.sources import LiveSources
from perftop.tui.widgets.proctable import LineTable
from tests.integration.test_frameworks import CONTROL
from tests.integration.test_prefork import WORKERS, Load, Server, start_server, stop_server
from tests.targets.prefork_app import GROW_BYTES
from tests.tui.waiting import wait_for

APP = Path(__file__).resolve().parent.parent / "targets" / "prefork_app.py"
GROW_SITE = "prefork_app.py:" + str(
    next(n for n, line in enumerate(APP.read_text().splitlines(), 1) if "bytearray(GROW_BYTES)" in line)
)
"""Where the app allocates the buffer `/grow` keeps."""
LOOP = "planted_cpu_loop"
"""The function `/burn` spins in."""
OBJECT_HEADER_MAX = 128
"""A bytearray's own header beside its buffer, at most (tracemalloc counts both)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("actions-workers"), *CONTROL)
    yield s
    stop_server(s)


def _row(text: str, title: str) -> list[str]:
    """The cells of the side-by-side table row named `title` (the first such row)."""
    line = next(line for line in text.splitlines() if line.startswith(title))
    return line[len(title) :].split()


async def _run_in_all(pilot: Any, app: PerftopApp, key: str, done: Any, timeout: float = 60) -> None:
    """Press an action key, answer the target picker with Enter (every worker), wait for the result."""
    await pilot.press(key)
    await wait_for(pilot, lambda: isinstance(app.screen, TargetPicker))
    await pilot.press("enter")
    await wait_for(pilot, done, timeout=timeout)


async def test_per_worker_results_side_by_side(server: Server) -> None:
    workers = server.workers()
    assert len(workers) == WORKERS
    sources = LiveSources(socket_dir=server.socket_dir)
    app = PerftopApp(sources=sources, pid=server.master, interval=0.25, profile_seconds=2.0)
    async with app.run_test(size=(160, 50)) as pilot:
        process = app.query_one(ProcessPane)
        await wait_for(
            pilot,
            lambda: (
                process.sample is not None
                and process.sample.tree is not None
                and sorted(w.pid for w in process.sample.tree.workers if w.has_agent) == workers
            ),
            timeout=30,
        )
        pane = app.query_one(ActionsPane)

        def text() -> str:
            return str(pane.query_one("#result").render())

        # gc: a column per worker, and one for all of them
        await _run_in_all(pilot, app, "g", lambda: "gc" in pane.results)
        gc = pane.results["gc"]
        assert sorted(per_worker("gc", gc)) == workers
        assert "3 workers" in str(pane.border_title)
        shown = text()
        assert _row(shown, "     ") == ["all", *(str(p) for p in workers)]
        per_pid = [gc["per_pid"][p]["collected"] for p in workers]
        assert _row(shown, "collected") == [fmt_count(sum(per_pid)), *(fmt_count(n) for n in per_pid)]

        # memory: each worker's growth at the site the test made it grow, in its own column
        await _run_in_all(pilot, app, "m", lambda: "memory" in pane.results)
        assert pane.results["memory"]["started"] is True
        answered = {p: 0 for p in workers}
        for _ in range(12):
            answered[server.get("/grow")] += 1
        await _run_in_all(pilot, app, "m", lambda: pane.results["memory"].get("started") is False)
        sites = pane.query_one("#memory-sites", DataTable)
        await wait_for(pilot, lambda: sites.row_count > 0)
        heads = [str(c.label) for c in sites.columns.values()]
        assert heads[: 1 + WORKERS] == ["growth", *(str(p) for p in workers)]
        assert heads[1 + WORKERS] == "allocated at"
        rows = [sites.get_row_at(i) for i in range(sites.row_count)]
        row = next(r for r in rows if str(r[1 + WORKERS]).endswith(GROW_SITE))
        for k, pid in enumerate(workers):
            cell = str(row[1 + k])
            if answered[pid] == 0:
                assert cell == "-", (pid, cell)
                continue
            grown = int(cell.replace(",", ""))
            low = answered[pid] * GROW_BYTES
            assert low <= grown <= answered[pid] * (GROW_BYTES + OBJECT_HEADER_MAX), (pid, grown, answered)
        assert _row(text(), "traced") and len(_row(text(), "traced")) == 2 * WORKERS  # "12.3 KiB" each
        await _run_in_all(pilot, app, "M", lambda: pane.results["memory"].get("tracing") is False)

        # threads: a section per worker, whose main thread is that worker's own
        await _run_in_all(pilot, app, "t", lambda: "threads" in pane.results)
        by_pid = per_worker("threads", pane.results["threads"])
        assert sorted(by_pid) == workers
        for pid, threads in by_pid.items():
            assert [t["native_id"] for t in threads if t["name"] == "MainThread"] == [pid]
            assert f"── worker {pid}: {len(threads)} threads ──" in text()

        # `w` in the picker: the worker under the table's cursor alone, and the title says which
        await pilot.press("1")
        process.query_one("#workers", LineTable).focus()
        await pilot.press("home")
        chosen = process.selected_worker
        assert chosen is not None
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TargetPicker))
        await pilot.press("w")
        await wait_for(pilot, lambda: pane.where.get("threads") == f"PID {chosen.pid}", timeout=60)
        assert [t["native_id"] for t in pane.results["threads"] if t["name"] == "MainThread"] == [chosen.pid]
        assert f"thread dump · PID {chosen.pid}" in str(pane.border_title)
        assert not pane.has_class("-workers") and "── worker" not in text()

        # profile: merged, with each worker's samples of the CPU loop the requests ran
        with Load(server, "/burn", clients=3) as load:
            await _run_in_all(pilot, app, "p", lambda: "profile" in pane.results, timeout=90)
        assert load.errors == 0
        profile = pane.results["profile"]
        assert sorted(per_worker("profile", profile)) == workers
        shown = text()
        assert (
            "samples by worker: "
            + ", ".join(
                f"{p} {profile['per_pid'][p]['samples']} ({profile['per_pid'][p]['idle_samples']} idle)"
                for p in workers
            )
            in shown
        )
        head = next(line for line in shown.splitlines() if line.lstrip().startswith("self%"))
        assert head.split()[2 : 2 + WORKERS] == [str(p) for p in workers]
        # the loop's rows (one per source line a sampler named it by), each worker's column summed
        loops = [line.split()[2 : 2 + WORKERS] for line in shown.splitlines() if f" {LOOP} (" in line]
        shown_own = [sum(int(row[k]) for row in loops) for k in range(WORKERS)]
        entries = {p: [f for f in profile["per_pid"][p]["top"] if f["function"] == LOOP] for p in workers}
        own = [sum(f["self_samples"] for f in entries[p]) for p in workers]
        assert shown_own == own, entries
        busy = [p for p, n in load.by_worker.items() if n >= 5]
        assert busy and all(own[workers.index(p)] > 0 for p in busy), (own, load.by_worker)
    sources.agents.close()
