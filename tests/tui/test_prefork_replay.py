"""`perftop record` of a gunicorn master stores its process tree, and `perftop replay` shows it.

A real gunicorn (3 workers) under `perftop run`, recorded by a real `perftop record --pid MASTER`; one worker
is killed while recording (gunicorn starts another). Oracles: psutil's children of the master before and
after the kill (the recorded worker rows), the killed PID (marked gone in every later interval).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from textual.widgets import Input

from perftop.recording.errors import RecordingError
from perftop.recording.frames import agent_from_json, process_from_json
from perftop.recording.store import RecordingReader
from perftop.tui.panes.process import ProcessPane
from perftop.tui.replay import ReplayApp
from perftop.tui.widgets.proctable import LineTable
from tests.helpers import wait_for
from tests.integration.test_frameworks import CONTROL
from tests.integration.test_prefork import WORKERS, start_server, stop_server
from tests.tui.waiting import wait_for as wait_in_app

RECORD = ("--interval", "0.2")


def _respawned(workers: list[int], victim: int) -> bool:
    return victim not in workers and len(workers) == WORKERS


def _workers(doc: dict[str, object]) -> dict[int, bool]:
    """{worker pid: gone} of one recorded interval."""
    tree = process_from_json(doc).tree  # type: ignore[arg-type]
    return {} if tree is None else {w.pid: w.gone for w in tree.workers}


async def test_record_stores_the_tree_and_replay_marks_the_departed_worker_gone(tmp_path: Path) -> None:
    server = start_server(tmp_path, *CONTROL)
    path = str(tmp_path / "gunicorn.rec")
    try:
        before = server.workers()
        assert len(before) == WORKERS
        recorder = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "perftop",
                "record",
                "--pid",
                str(server.master),
                "-o",
                path,
                *RECORD,
                "--socket-dir",
                server.socket_dir,
            ],
            env=server.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:

            def recorded(n: int) -> bool:
                try:
                    reader = RecordingReader(path)
                except RecordingError:
                    return False  # not created yet
                try:
                    return len(reader) >= n
                finally:
                    reader.close()

            wait_for(lambda: recorded(3), 60, "3 recorded intervals", interval=0.1)
            for _ in range(6):
                server.get("/")
            victim = before[0]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: _respawned(server.workers(), victim), 60, "a respawn", interval=0.1)
            after = server.workers()
            reader = RecordingReader(path)
            marked = len(reader)
            reader.close()
            wait_for(lambda: recorded(marked + 4), 60, "4 more intervals", interval=0.1)
        finally:
            recorder.send_signal(signal.SIGTERM)
            _, err = recorder.communicate(timeout=60)
        assert recorder.returncode == 0, err
    finally:
        stop_server(server)

    reader = RecordingReader(path)
    docs = [reader.frame(i) for i in range(len(reader))]
    first, last = _workers(docs[0]), _workers(docs[-1])
    assert first == dict.fromkeys(before, False)
    assert last == {**dict.fromkeys(after, False), victim: True}
    assert all(_workers(d).get(victim) is True for d in docs[marked:])
    last_tree = process_from_json(docs[-1]).tree
    assert last_tree is not None and last_tree.departed == 1
    assert sorted(last_tree.pids[1:]) == sorted(after)
    agents = [w for w in last_tree.workers if not w.gone]
    assert all(w.has_agent for w in agents)  # each live worker's agent figures were recorded with it
    view = agent_from_json(docs[-1])
    assert view is not None and view.gone_pids == (victim,)  # its last counts kept in the merged view

    app = ReplayApp(reader)
    async with app.run_test(size=(140, 45)) as pilot:
        pane = app.query_one(ProcessPane)
        await wait_in_app(pilot, lambda: sorted(pane.shown_workers) == sorted(before), timeout=30)
        await wait_in_app(pilot, lambda: app.focused is not None and not isinstance(app.focused, Input))
        await pilot.press("end")  # the last interval
        await wait_in_app(pilot, lambda: pane.shown_workers[-1:] == [victim], timeout=30)
        lines = pane.query_one("#workers", LineTable)._lines
        gone = [line for line in lines if line.split() and line.split()[0] == str(victim)]
        assert gone and "gone" in gone[0]
        assert sorted(pane.shown_workers[:-1]) == sorted(after)
        assert "departed 1" in str(pane.query_one("#tree-title").render())
