"""`perftop replay FILE`: the TUI over a recording instead of live collectors.

`ReplaySources` implements the `Sources` protocol from a `RecordingReader`: every pane gets what was
recorded at the replay position (the timings window is computed from the recorded since-start sketches:
the difference of two intervals' sketches is the distribution of what happened between them), and requests
to the agent are refused. `ReplayApp` is the normal app with a sampler that samples only when the position
moves, the keys to move it (left/right one interval, `[`/`]` ten, home/end, space play/pause, `+`/`-` the
playback pace) and a time bar.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from textual.app import RenderResult
from textual.binding import Binding
from textual.markup import escape
from textual.message import Message
from textual.reactive import reactive
from textual.theme import Theme
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Input, Label, TextArea

from perftop._version import __version__
from perftop.collectors.agent_client import AgentError
from perftop.collectors.agent_view import AgentView
from perftop.collectors.errors import NoSuchProcessError
from perftop.collectors.model import ProcessRow, ProcessSample, SystemSample
from perftop.recording.errors import MALFORMED, RecordingError
from perftop.recording.frames import (
    agent_from_json,
    agent_over_window,
    process_from_json,
    process_row_from_json,
    system_from_json,
)
from perftop.recording.store import RecordingReader
from perftop.tui.app import PerftopApp
from perftop.tui.sampler import Sampler

T = TypeVar("T")
JUMP = 10
"""Intervals `[` and `]` move by."""
REPLAY_ACTIONS = ("step", "jump_to")
DISABLED_IN_REPLAY = ("record", "toggle_record", "toggle_recording")
"""Actions of the live app that make no sense over a recording."""


class ReplaySources:
    """The `Sources` of a replay: the recorded values at the interval the sampler last moved to.

    `cursor` is where the user wants to be (set from the UI); `shown` is the interval the panes show (set
    by the sampler at the start of each tick, so one tick reads one interval throughout).
    """

    def __init__(self, reader: RecordingReader) -> None:
        self.reader = reader
        self.cursor = 0
        self.shown = 0

    def _doc(self) -> dict[str, Any]:
        return self.reader.frame(self.shown)

    def system(self) -> SystemSample:
        return _converted(system_from_json, self._doc())

    def processes(self) -> list[ProcessRow]:
        return [_converted(process_row_from_json, self._doc())]

    def process(self, pid: int) -> ProcessSample:
        sample = _converted(process_from_json, self._doc())
        if sample.pid != pid:
            raise NoSuchProcessError(pid, f"process {pid} is not in this recording")
        return sample

    def agent(self, pid: int, window: float | None) -> AgentView | None:
        index = self.shown
        view = _converted(agent_from_json, self.reader.frame(index))
        if view is None or window is None or index == 0:
            return view
        times = self.reader.times
        base_index = min(self.reader.index_at(times[index] - window), index - 1)
        base = _converted(agent_from_json, self.reader.frame(base_index))
        return agent_over_window(view, base, times[index] - times[base_index], window)

    def now(self) -> float:
        return self.reader.times[self.shown]

    def call(
        self, pid: int, method: str, params: dict[str, Any], timeout: float, children: bool = True
    ) -> Any:
        raise AgentError(f"{method}: not available in a replay (the recorded process is not here to ask)")

    def forget_departed(self, pid: int) -> None:
        """A replay shows what was recorded: nothing to forget."""


def _converted(convert: Callable[[dict[str, Any]], T], doc: dict[str, Any]) -> T:
    """`convert(doc)`, with a malformed interval reported as a RecordingError."""
    try:
        return convert(doc)
    except MALFORMED as exc:
        raise RecordingError(f"a recorded interval is malformed ({exc!r})") from None


class ReplayShown(Message):
    """The panes were just fed the interval `index`."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index


class ReplaySampler(Sampler):
    """Samples the replay sources once each time it is poked (the position, window or pid changed),
    never on a timer: a replay's time moves only when the user or the playback moves it."""

    def __init__(self, app: ReplayApp, sources: ReplaySources) -> None:
        super().__init__(app, sources, 1.0)
        self.replay = sources

    def run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stopping.is_set():
                return
            self.tick()

    def tick(self) -> None:
        self.replay.shown = self.replay.cursor
        self._gone = None  # stepping back to a time the process was there shows it again
        super().tick()
        self.app.post_message(ReplayShown(self.replay.shown))


class TimeBar(Widget):
    """`⏸ 12/340  2026-11-24 03:12:05  ━━━━━━╸──────  +0:02:11 of 0:05:39`: where the replay is."""

    DEFAULT_CSS = """
    TimeBar { height: 1; width: 1fr; background: $panel; color: $foreground; padding: 0 1; }
    """

    index: reactive[int] = reactive(0)
    """The interval shown (0 = the oldest kept)."""
    playing: reactive[bool] = reactive(False)
    """Whether playback is running."""

    def __init__(self, times: list[float], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.times = times

    def text(self, width: int = 80) -> str:
        times, index = self.times, min(self.index, len(self.times) - 1)
        at = times[index]
        head = (
            f"{'▶' if self.playing else '⏸'} {index + 1}/{len(times)}  "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(at))}  "
        )
        tail = f"  +{_clock(at - times[0])} of {_clock(times[-1] - times[0])}"
        room = max(0, width - len(head) - len(tail))
        if room < 5:
            return head + tail.strip()
        done = round(room * index / max(1, len(times) - 1))
        bar = "━" * done + ("╸" if done < room else "") + "─" * max(0, room - done - 1)
        return head + bar + tail

    def render(self) -> RenderResult:
        return self.text(max(20, self.size.width))


def _clock(seconds: float) -> str:
    total = max(0, round(seconds))
    return f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"


class ReplayApp(PerftopApp):
    """The perftop TUI over a recording: every pane as recorded, a time bar, keys to move in time.

    Starts paused on the first interval; space plays one interval every `interval` seconds (the
    recording's own pace; `+`/`-` change it).
    """

    BINDINGS = [
        Binding("left", "step(-1)", "◀ Step", priority=True),
        Binding("right", "step(1)", "Step ▶", priority=True),
        Binding("left_square_bracket", "step(-10)", f"-{JUMP}", key_display="[", priority=True),
        Binding("right_square_bracket", "step(10)", f"+{JUMP}", key_display="]", priority=True),
        Binding("home", "jump_to(0)", "Start", show=False, priority=True),
        Binding("end", "jump_to(-1)", "End", show=False, priority=True),
        Binding("space", "toggle_pause", "Play/Pause"),
    ]

    def __init__(
        self,
        reader: RecordingReader,
        theme_name: str | None = None,
        themes: dict[str, Theme] | None = None,
        start_sampler: bool = True,
    ) -> None:
        self.reader = reader
        self.replay = ReplaySources(reader)
        super().__init__(
            self.replay,
            pid=reader.pid,
            interval=reader.interval,
            theme_name=theme_name,
            themes=themes,
            start_sampler=start_sampler,
        )
        self.sampler = ReplaySampler(self, self.replay)
        self.set_reactive(PerftopApp.paused, True)
        self._player: Timer | None = None
        self.time_bar = TimeBar(reader.times, id="timebar")
        self.title = f"perftop replay {os.path.basename(reader.path)}"

    async def on_mount(self) -> None:
        await self.mount(self.time_bar, after="#main")

    @property
    def position(self) -> int:
        """The interval the user moved to (the panes follow within a tick)."""
        return self.replay.cursor

    def go_to(self, index: int) -> None:
        """Move the replay to interval `index` (clamped to the recording)."""
        index = max(0, min(len(self.reader) - 1, index))
        if index != self.replay.cursor:
            self.replay.cursor = index
            self.sampler.poke()

    def action_step(self, delta: int) -> None:
        self.go_to(self.replay.cursor + delta)

    def action_jump_to(self, index: int) -> None:
        self.go_to(index if index >= 0 else len(self.reader) - 1)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Time keys act on the main screen, and not while typing in a field (where arrows move the
        caret); the live app's recording key does nothing here."""
        if action in DISABLED_IN_REPLAY:
            return False
        if action in REPLAY_ACTIONS:
            return self.screen is self.screen_stack[0] and not isinstance(self.focused, (Input, TextArea))
        return super().check_action(action, parameters)

    def on_replay_shown(self, msg: ReplayShown) -> None:
        self.time_bar.index = msg.index

    # -- playback --------------------------------------------------------------------------------------

    def watch_paused(self, paused: bool) -> None:
        """Space: play or pause (at the end, play starts again from the beginning)."""
        self._stop_player()
        if not paused:
            if self.replay.cursor >= len(self.reader) - 1:
                self.go_to(0)
            self._player = self.set_interval(self.interval, self._advance)
        self.time_bar.playing = not paused
        self._status()

    def watch_interval(self, interval: float) -> None:
        """`+`/`-`: the playback pace."""
        if self._player is not None:
            self._stop_player()
            self._player = self.set_interval(interval, self._advance)
        self._status()

    def _stop_player(self) -> None:
        if self._player is not None:
            self._player.stop()
            self._player = None

    def _advance(self) -> None:
        if self.replay.cursor >= len(self.reader) - 1:
            self.paused = True
        else:
            self.go_to(self.replay.cursor + 1)

    def _status(self) -> None:
        if not self.is_running:
            return
        state = (
            "[reverse] PAUSED [/reverse]"
            if self.paused
            else f"playing, one interval every {self.interval:g}s"
        )
        self.query_one("#status", Label).update(
            f"perftop {__version__} · replay of {escape(os.path.basename(self.reader.path))}"
            f" (pid {self.reader.pid}, recorded every {self.reader.interval:g}s) · {state}"
            " · ←/→ step · \\[ ] ±10 · space play"
        )
