"""The sampler: one background thread that runs the collectors and posts their results as messages.

The timer lives here, not on the UI thread: psutil and socket calls never run in the event loop. Pausing
stops the posting; a change of interval or of the attached PID wakes the thread at once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from textual.app import App
from textual.message import Message

from perftop.collectors.errors import CollectorError
from perftop.tui.messages import (
    AgentSampled,
    ProcessesListed,
    ProcessExited,
    ProcessSampled,
    Sampled,
    SystemSampled,
)
from perftop.tui.sources import Sources

log = logging.getLogger("perftop")


class Sampler(threading.Thread):
    """Samples every `interval` seconds: the host always; the process list or the attached process."""

    def __init__(self, app: App[Any], sources: Sources, interval: float) -> None:
        super().__init__(name="perftop-sampler", daemon=True)
        self.app = app
        self.sources = sources
        self.interval = interval
        self.paused = False
        self.pid: int | None = None
        """The attached PID; None shows the process list."""
        self.window: float | None = None
        """The timings window asked of the agent (seconds), None for since start."""
        self._gone: int | None = None
        self._fresh = True
        """No tick yet since the start or the last attach: the first frame of a view waits for it."""
        self._wake = threading.Event()
        self._stopping = threading.Event()

    def poke(self) -> None:
        """Sample now (after a change of PID, window, interval or pause)."""
        self._wake.set()

    def attach(self, pid: int | None) -> None:
        self.pid = pid
        self._gone = None
        self._fresh = True
        self.poke()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        self._wake.clear()  # a poke before the start is served by the first tick itself
        while not self._stopping.is_set():
            if not self.paused:
                self.tick()
            self._wake.wait(self.interval)
            self._wake.clear()

    def tick(self) -> None:
        """One round of sampling; every failure is contained so the thread never dies.

        The tick's messages go to the app together, once all are taken, in one `Sampled`: the app draws
        them in one screen update. The first tick of a view (at the start, after an attach) sends the host
        and the process as soon as they are read, before asking the agent, which is slower: that is the
        view's first frame."""
        messages: list[Message] = []
        fresh, self._fresh = self._fresh, False
        try:
            messages.append(SystemSampled(self.sources.system()))
        except Exception:
            log.exception("system sampling failed")
        try:
            pid = self._sample_os(messages)
            if pid is not None:
                if fresh:
                    self.app.post_message(Sampled(messages))
                    messages = []
                messages.append(self._sample_agent(pid))
        finally:
            if messages:
                self.app.post_message(Sampled(messages))

    def _sample_os(self, messages: list[Message]) -> int | None:
        """The process list, or the attached process: the PID whose agent to ask next, if any (read once:
        the app may attach elsewhere meanwhile)."""
        pid = self.pid
        if pid is None:
            try:
                messages.append(ProcessesListed(self.sources.processes()))
            except Exception:
                log.exception("process listing failed")
            return None
        if pid == self._gone:
            return None
        try:
            messages.append(ProcessSampled(self.sources.process(pid)))
        except CollectorError as exc:
            self._gone = pid
            messages.append(ProcessExited(pid, str(exc)))
            return None
        except Exception:
            log.exception("process sampling failed")
        return pid

    def _sample_agent(self, pid: int) -> AgentSampled:
        """The agent data of the attached process (None where it has none), or why it failed."""
        try:
            view = self.sources.agent(pid, self.window)
            rows = None
            if view is not None:  # here, off the UI thread: once per tick
                from perftop.collectors.rows import view_rows  # with the first agent, not the list

                rows = view_rows(view)
            return AgentSampled(pid, view, rows=rows)
        except Exception as exc:
            return AgentSampled(pid, None, error=str(exc) or type(exc).__name__)
