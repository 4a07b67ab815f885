"""`perftop replay` with Pilot: a real process recorded by a real `perftop record` (SIGKILLed at the end),
then replayed: every pane shows the values stored for the interval the time bar names, and the keys move
through the recording."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input

from perftop.collectors.agent_client import AgentError
from perftop.recording.store import RecordingReader
from perftop.render.units import fmt_bytes
from perftop.tui.panes.queries import QueriesPane
from perftop.tui.panes.timings import TimingsPane
from perftop.tui.replay import ReplayApp
from tests.helpers import short_tmp_dir, wait_for
from tests.targets.agent_harness import Target
from tests.targets.exp_procs import Command
from tests.tui.waiting import wait_for as wait_in_app

SCRIPT = Path(__file__).resolve().parents[1] / "targets" / "exp_target.py"


def _rows(path: str) -> int:
    if not os.path.exists(path):
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        try:
            return int(db.execute("SELECT count(*) FROM samples").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A recording of a working target: more `work` calls between intervals, so they all differ."""
    path = str(tmp_path_factory.mktemp("replay") / "app.rec")
    with short_tmp_dir() as sockets, Target(sockets, "replayed", script=SCRIPT) as app:
        app.cmd("sql t_items:5")
        with Command(
            "record", "--pid", str(app.pid), "-o", path, "--interval", "0.1", "--socket-dir", sockets
        ) as recorder:
            recorder.wait_line("recording PID")
            for rows in range(1, 25):
                app.cmd("work 7")
                app.cmd(f"gauge queue.depth {rows}")
                wait_for(lambda rows=rows: _rows(path) >= rows, timeout=30)  # type: ignore[misc]
            os.kill(recorder.proc.pid, signal.SIGKILL)
    yield path


def stored(path: str) -> list[dict[str, Any]]:
    reader = RecordingReader(path)
    try:
        return [reader.frame(i) for i in range(len(reader))]
    finally:
        reader.close()


def shown_text(app: ReplayApp, selector: str) -> str:
    return str(app.query_one(selector).render())


def pane_mismatches(app: ReplayApp, index: int, doc: dict[str, Any], count: int) -> list[str]:
    """What the screen shows that is not interval `index` (of `count`) as stored in `doc`: empty when
    every pane shows it."""
    wrong = []
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(doc["taken_at"]))
    if f"{index + 1}/{count}  {when}" not in app.time_bar.text(120):
        wrong.append(f"time bar: {app.time_bar.text(120)!r}")
    cpu = f"{doc['system']['cpu_percent']:5.1f}%"
    if cpu not in shown_text(app, "#cpu-text"):
        wrong.append(f"cpu: {shown_text(app, '#cpu-text')!r}, stored {cpu!r}")
    head = shown_text(app, "#head")
    for expected in (
        f"rss {fmt_bytes(doc['process']['rss_bytes'])}",
        f"threads {doc['process']['num_threads']}",
    ):
        if expected not in head:
            wrong.append(f"process: {head!r} lacks {expected!r}")
    timings = app.query_one(TimingsPane)
    rows = {row["name"]: row for row in timings.rows()}
    if "work" not in rows or rows["work"]["count"] != doc["timings"]["work"]["count"]:
        wrong.append(f"timings: {rows.get('work')}, stored {doc['timings']['work']}")
    if timings.view is None or timings.view.gauges != doc["gauges"]:
        wrong.append(f"gauges: {timings.view and timings.view.gauges}, stored {doc['gauges']}")
    stored_fps = [q["fingerprint"] for q in sorted(doc["queries"], key=lambda q: -(q.get("total_ms") or 0))]
    if [q["fingerprint"] for q in app.query_one(QueriesPane).rows()] != stored_fps:
        wrong.append("queries")
    return wrong


async def assert_shows(pilot: Any, app: ReplayApp, index: int, doc: dict[str, Any], count: int) -> None:
    """Every pane comes to show interval `index` of `count`, whose stored document is `doc`."""
    try:
        await wait_in_app(pilot, lambda: not pane_mismatches(app, index, doc, count))
    except AssertionError:
        raise AssertionError(
            f"interval {index} (cursor {app.replay.cursor}, shown {app.replay.shown}): "
            f"{pane_mismatches(app, index, doc, count)}"
        ) from None
    assert app.replay.shown == index


async def started(pilot: Any, app: ReplayApp) -> None:
    """The first interval is on screen and the attached view has the focus (until then it is in the
    process list's filter field, where the arrow keys move the caret, not the replay)."""
    await wait_in_app(
        pilot,
        lambda: (
            app.query_one(TimingsPane).view is not None
            and app.time_bar.region.width
            and app.focused is not None
            and not isinstance(app.focused, Input)
        ),
    )


async def test_replay_shows_the_recorded_values_at_the_recorded_times(recording: str) -> None:
    docs = stored(recording)
    n = len(docs)
    assert n >= 20
    counts = [d["timings"]["work"]["count"] for d in docs]
    assert counts == sorted(counts) and counts[-1] > counts[0]  # the intervals differ
    app = ReplayApp(RecordingReader(recording))
    async with app.run_test(size=(140, 45)) as pilot:
        assert app.paused  # a replay starts paused on its first interval
        await started(pilot, app)
        await assert_shows(pilot, app, 0, docs[0], n)
        await pilot.press("right")
        await assert_shows(pilot, app, 1, docs[1], n)
        await pilot.press("right_square_bracket")
        await assert_shows(pilot, app, 11, docs[11], n)
        await pilot.press("left")
        await assert_shows(pilot, app, 10, docs[10], n)
        await pilot.press("left_square_bracket", "left_square_bracket")
        await assert_shows(pilot, app, 0, docs[0], n)
        await pilot.press("end")
        await assert_shows(pilot, app, n - 1, docs[-1], n)
        await pilot.press("right")  # past the end: stays
        await assert_shows(pilot, app, n - 1, docs[-1], n)


async def test_timings_window_over_a_replay_is_the_difference_of_two_intervals(recording: str) -> None:
    docs = stored(recording)
    reader = RecordingReader(recording)
    app = ReplayApp(reader)
    async with app.run_test(size=(140, 45)) as pilot:
        await started(pilot, app)
        await pilot.press("end")
        await wait_in_app(pilot, lambda: app.replay.shown == len(docs) - 1)
        await pilot.press("2", "w")  # the Timings tab, then its 10 s window
        timings = app.query_one(TimingsPane)
        await wait_in_app(pilot, lambda: timings.view is not None and timings.view.window_s == 10.0)
        last = len(docs) - 1
        base = min(reader.index_at(reader.times[last] - 10.0), last - 1)
        expected = docs[last]["timings"]["work"]["count"] - docs[base]["timings"]["work"]["count"]
        assert {r["name"]: r for r in timings.rows()}["work"]["count"] == expected
        assert "window 10 s" in str(timings.border_title)


async def test_space_plays_to_the_end_and_agent_requests_are_refused(recording: str, tmp_path: Path) -> None:
    copy = str(tmp_path / "copy.rec")
    shutil.copy(recording, copy)
    app = ReplayApp(RecordingReader(copy))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(pilot, app)
        await pilot.press("minus", "minus", "minus", "minus")  # the fastest pace: 0.25 s per interval
        await pilot.press("end", "left", "left")
        await wait_in_app(pilot, lambda: app.replay.shown == len(app.reader) - 3)
        await pilot.press("space")
        assert not app.paused and app.time_bar.playing
        await wait_in_app(pilot, lambda: app.replay.shown == len(app.reader) - 1, timeout=20)
        await wait_in_app(pilot, lambda: app.paused, timeout=20)  # stops by itself at the end
        assert "PAUSED" in shown_text(app, "#status")
        with pytest.raises(AgentError, match="not available in a replay"):
            app.replay.call(app.reader.pid, "action", {"name": "gc"}, 5.0)
