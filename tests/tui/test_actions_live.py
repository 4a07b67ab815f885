"""The Actions pane against a real instrumented process: the keys run real actions in its agent."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.widgets import DataTable, TabbedContent

from perftop.collectors.discovery import find_agent
from perftop.recording.store import RecordingReader
from perftop.tui.app import PerftopApp
from perftop.tui.panes.actions import ActionsPane
from perftop.tui.panes.process import ProcessPane
from perftop.tui.screens.confirm import Confirm
from perftop.tui.screens.traceback import TracebackView
from perftop.tui.sources import LiveSources
from perftop.tui.widgets.flame import FlameView
from tests import helpers
from tests.tui.waiting import wait_for

TARGET = str(Path(__file__).resolve().parent.parent / "targets" / "cli_hot_app.py")


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    sockets = str(tmp_path / "sockets")
    env = {**os.environ, "PERFTOP_SOCKET_DIR": sockets}
    proc = subprocess.Popen(
        [sys.executable, TARGET], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    helpers.wait_for(lambda: find_agent(proc.pid, sockets), 10, "the target's agent", interval=0.05)
    yield proc, sockets
    proc.kill()
    proc.wait()


async def test_action_keys_run_in_the_agent_and_show_results(
    target: tuple[subprocess.Popen[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, sockets = target
    monkeypatch.chdir(tmp_path)
    # A profile long enough to be still running when the test checks, on a loaded machine too.
    app = PerftopApp(sources=LiveSources(socket_dir=sockets), pid=proc.pid, interval=0.5, profile_seconds=3.0)
    async with app.run_test(size=(140, 45)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.focused, ProcessPane))
        pane = app.query_one(ActionsPane)
        await pilot.press("p")
        # Pilot's idle wait can return before a loaded machine has handled the key: wait for its effect.
        await wait_for(pilot, lambda: app.query_one(TabbedContent).active == "tab-actions")
        assert pane.running == "profile"
        assert not pane.start("profile", {"seconds": 3.0})  # refused while the first one runs
        await wait_for(pilot, lambda: "profile" in pane.results, timeout=30)
        profile = pane.results["profile"]
        assert profile["top"][0]["function"] == "burn_cpu_here"
        assert "burn_cpu_here" in str(pane.query_one("#result").render())
        # the flame view: navigable, zooms
        scroll = pane.query_one("#result-scroll")
        scroll.focus()  # takes effect later: the next key must not reach the widget focused before
        await wait_for(pilot, lambda: scroll.has_focus)
        await pilot.press("f")
        flame = pane.query_one(FlameView)
        await wait_for(pilot, lambda: flame.display and flame.has_focus)
        root = flame.root
        assert root is not None and flame.cursor is not None
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: flame.root is not root)
        zoomed = flame.root
        assert zoomed is flame.cursor and zoomed is not None
        await pilot.press("backspace")
        await wait_for(pilot, lambda: flame.root is zoomed.parent)
        # gc, threads, memory twice, stop
        await pilot.press("g")
        await wait_for(pilot, lambda: "gc" in pane.results, timeout=30)
        assert "collected" in str(pane.query_one("#result").render())
        await pilot.press("t")
        await wait_for(pilot, lambda: "threads" in pane.results, timeout=30)
        assert "idle-waiter" in {t["name"] for t in pane.results["threads"]}
        await pilot.press("m")
        await wait_for(pilot, lambda: "memory" in pane.results, timeout=30)
        assert pane.results["memory"]["started"] is True
        # While the app traces, the header says so, with its overhead and when it stops by itself.
        await wait_for(pilot, lambda: "memory tracing ON" in str(pane.border_title), timeout=30)
        assert "stops in 9 min" in str(pane.border_title) or "stops in 10 min" in str(pane.border_title)
        await pilot.press("m")  # the second press diffs against the first snapshot
        await wait_for(pilot, lambda: pane.results["memory"]["started"] is False, timeout=30)
        sites = pane.query_one("#memory-sites", DataTable)
        assert pane.has_class("-memory") and sites.row_count > 0
        sites.focus()
        await wait_for(pilot, lambda: sites.has_focus)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, TracebackView))
        assert "cli_hot_app.py" in str(app.screen.query_one("#traceback").render())
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, TracebackView))
        await pilot.press("M")
        await wait_for(pilot, lambda: pane.results["memory"]["tracing"] is False, timeout=30)
        await wait_for(pilot, lambda: "memory tracing" not in str(pane.border_title), timeout=30)
        # results stay and can be saved
        scroll = pane.query_one("#result-scroll")
        scroll.focus()  # takes effect later: the next key must not reach the widget focused before
        await wait_for(pilot, lambda: scroll.has_focus)
        await pilot.press("s")
        await wait_for(pilot, lambda: len(list(tmp_path.glob("perftop-memory-*.json"))) == 1)
    assert proc.poll() is None


async def test_r_records_the_attached_process_and_r_again_stops(
    target: tuple[subprocess.Popen[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc, sockets = target
    monkeypatch.chdir(tmp_path)
    app = PerftopApp(sources=LiveSources(socket_dir=sockets), pid=proc.pid, interval=0.25)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.focused, ProcessPane))
        await pilot.press("r")
        await wait_for(pilot, lambda: app.recorder is not None)
        recorder = app.recorder
        assert recorder is not None
        assert "REC" in str(app.query_one("#status").render())
        await wait_for(pilot, lambda: recorder.intervals >= 3, timeout=30)
        await pilot.press("r")
        assert app.recorder is None
        await wait_for(pilot, lambda: not recorder.running, timeout=30)
    reader = RecordingReader(recorder.path)
    assert reader.pid == proc.pid
    assert len(reader.times) >= 3
    frame = reader.frame(len(reader) - 1)
    assert frame["process"]["pid"] == proc.pid
    assert "work" in frame["timings"]  # the target's own metric, from its agent


async def test_i_injects_an_agent_into_a_plain_python_process(tmp_path: Path) -> None:
    sockets = str(tmp_path / "sockets")
    plain = subprocess.Popen(
        [sys.executable, "-c", "import time\nwhile True: time.sleep(0.1)"],
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    try:
        app = PerftopApp(sources=LiveSources(socket_dir=sockets), pid=plain.pid, interval=0.25)
        async with app.run_test(size=(120, 40)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.focused, ProcessPane))
            await pilot.press("2")
            timings = app.query_one("TimingsPane")
            await wait_for(pilot, lambda: timings.has_class("-no-agent"), timeout=20)
            await pilot.press("i")
            await wait_for(pilot, lambda: isinstance(app.screen, Confirm))
            await pilot.press("y")
            await wait_for(pilot, lambda: find_agent(plain.pid, sockets) is not None, timeout=30)
            await wait_for(pilot, lambda: not timings.has_class("-no-agent"), timeout=20)
        assert plain.poll() is None  # the target survived
    finally:
        plain.kill()
        plain.wait()
