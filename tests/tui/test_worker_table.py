"""The process pane of a parent: tree totals and the worker table (sort, Enter attaches, gone workers)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from perftop.collectors.model import ProcessSample, ProcessTree, WorkerRow
from perftop.tui.app import PerftopApp
from perftop.tui.panes.actions import ActionsPane
from perftop.tui.panes.process import ProcessPane
from perftop.tui.screens.target_picker import TargetPicker
from perftop.tui.sources import LiveSources
from perftop.tui.widgets.proctable import LineTable
from tests.targets.workers_client import workers_app
from tests.tui.fixed import NOW, FixedSources
from tests.tui.waiting import wait_for

MiB = 1024**2
MASTER = 404


def _worker(
    pid: int, cpu: float, rss_mib: int, rate: float | None, p99: float | None, **kw: object
) -> WorkerRow:
    return WorkerRow(
        pid=pid,
        ppid=MASTER,
        name="gunicorn",
        started_at=NOW - (pid - 400) * 60,
        cpu_percent=cpu,
        rss_bytes=rss_mib * MiB,
        num_threads=2,
        has_agent=rate is not None,
        requests=None if rate is None else int(rate * 100),
        requests_per_s=rate,
        p99_ms=p99,
        **kw,  # type: ignore[arg-type]
    )


WORKERS = (
    _worker(501, 20.0, 40, 12.5, 80.0),
    _worker(502, 28.0, 30, 9.0, 120.0),
    _worker(503, 22.0, 50, 15.0, 60.0),
    _worker(499, 0.0, 45, 3.0, 300.0, gone=True, gone_at=NOW - 30),
    _worker(504, 1.0, 5, None, None),  # a worker running a binary: no agent, still a row
)
TREE = ProcessTree(
    pids=(MASTER, 501, 502, 503, 504),
    cpu_percent=71.5,
    rss_bytes=150 * MiB,
    pss_bytes=70 * MiB,
    num_threads=11,
    num_fds=60,
    num_connections=7,
    workers=WORKERS,
    departed=1,
)


class TreeSources(FixedSources):
    """The fixed sources, with PID 404 a gunicorn master of four live workers and one departed."""

    def process(self, pid: int) -> ProcessSample:
        sample = super().process(pid)
        return replace(sample, tree=TREE, cpu_percent=0.5) if pid == MASTER else sample


async def test_worker_table_sorts_marks_gone_and_enter_attaches() -> None:
    sources = TreeSources()
    app = PerftopApp(sources=sources, pid=MASTER, interval=0.1)
    async with app.run_test(size=(140, 45)) as pilot:
        pane = app.query_one(ProcessPane)
        await wait_for(pilot, lambda: pane.shown_workers)
        # live workers by CPU, the departed one last
        assert pane.shown_workers == [502, 503, 501, 504, 499]
        title = str(pane.query_one("#tree-title").render())
        assert "tree of 5: cpu  71.5%" in title and "pss 70.0 MiB" in title and "departed 1" in title
        lines = pane.query_one("#workers", LineTable)._lines
        assert "12.5" in lines[2] and "80ms" in lines[2] and "agent" in lines[2]
        assert "gone" in lines[4] and lines[4].split()[0] == "499"
        assert "no agent" in lines[3] and lines[3].split()[5] == "-"  # no req/s without an agent
        # the master's own CPU stays its own
        assert "cpu   0.5%" in str(pane.query_one("#head").render())

        await pilot.press("o")  # rss
        await wait_for(pilot, lambda: pane.shown_workers == [503, 501, 502, 504, 499])
        await pilot.press("o", "o")  # req/s, then p99
        await wait_for(pilot, lambda: pane.shown_workers == [502, 501, 503, 504, 499])

        assert app.focused is pane.query_one("#workers")
        await pilot.press("end", "enter")  # the gone worker: nothing to attach to
        assert app.attached == MASTER
        await pilot.press("x")
        await wait_for(pilot, lambda: sources.forgotten == [MASTER])

        await pilot.press("home", "down", "enter")  # 501 (second by p99)
        await wait_for(pilot, lambda: app.attached == 501)
        await wait_for(pilot, lambda: pane.sample is not None and pane.sample.pid == 501)
        assert not pane.has_class("-tree")  # a worker without children has no table


async def test_live_parent_lists_its_workers_and_attaches_to_one(tmp_path: Path) -> None:
    sockets = str(tmp_path / "sockets")
    env = {**os.environ, "PERFTOP_SOCKET_DIR": sockets}
    with workers_app(3, env) as (parent, workers):
        app = PerftopApp(sources=LiveSources(socket_dir=sockets), pid=parent.pid, interval=0.25)
        async with app.run_test(size=(140, 45)) as pilot:
            pane = app.query_one(ProcessPane)
            await wait_for(pilot, lambda: sorted(pane.shown_workers) == workers, timeout=30)
            # every worker's agent is found: each row says so once the agent view has been read
            await wait_for(
                pilot,
                lambda: (
                    pane.sample is not None
                    and pane.sample.tree is not None
                    and all(w.has_agent for w in pane.sample.tree.workers)
                ),
                timeout=30,
            )
            tree = pane.sample.tree if pane.sample else None
            assert tree is not None and tree.pids[0] == parent.pid
            # an action from the parent runs in every worker: merged, and each worker's own result
            # an action from the parent asks where; Enter: in every worker, merged, each one's result kept
            actions = app.query_one(ActionsPane)
            await pilot.press("g")
            await wait_for(pilot, lambda: isinstance(app.screen, TargetPicker))
            await pilot.press("enter")
            await wait_for(pilot, lambda: "gc" in actions.results, timeout=60)
            gc = actions.results["gc"]
            assert sorted(gc["per_pid"]) == workers
            assert gc["collected"] == sum(r["collected"] for r in gc["per_pid"].values())
            # `w`: in the worker under the table's cursor only (its main thread's native id is its PID)
            await pilot.press("1")
            pane.query_one("#workers", LineTable).focus()
            await pilot.press("o", "o", "o", "o", "o")  # by PID: an order the CPU figures do not shuffle
            await wait_for(pilot, lambda: pane.worker_sort == "pid" and pane.shown_workers == workers)
            await pilot.press("end", "t")
            await wait_for(pilot, lambda: isinstance(app.screen, TargetPicker))
            await pilot.press("w")
            await wait_for(pilot, lambda: "threads" in actions.results, timeout=60)
            main = [t for t in actions.results["threads"] if t["name"] == "MainThread"]
            assert [t["native_id"] for t in main] == [workers[-1]]
            # Escape: nothing runs
            await pilot.press("1", "g")
            await wait_for(pilot, lambda: isinstance(app.screen, TargetPicker))
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, TargetPicker))
            assert actions.running is None
            await pilot.press("1")
            pane.query_one("#workers", LineTable).focus()
            chosen = workers[1]
            await pilot.press("home", "down", "enter")
            await wait_for(pilot, lambda: app.attached == chosen)
            await wait_for(pilot, lambda: pane.sample is not None and pane.sample.pid == chosen, timeout=30)
