"""Recording a process: the Recorder thread samples host, process and agent every interval and appends
one document per interval to a `perftop.recording.store.RecordingWriter`.

psutil, the collectors that need it and the agent client are imported when a recording starts, not when
`perftop record` is registered on the CLI's parser.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from perftop._version import __version__
from perftop.collectors.errors import CollectorError
from perftop.collectors.model import ProcessSample, SystemSample
from perftop.recording.codec import MB, pack_sketch
from perftop.recording.errors import RecordingError
from perftop.recording.store import RecordingWriter
from perftop.render.snapshot import Snapshot, snapshot_json

if TYPE_CHECKING:
    from perftop.collectors.agent_view import AgentView
    from perftop.collectors.process import ProcessCollector
    from perftop.collectors.workers import TreeCollector

log = logging.getLogger("perftop")

DEFAULT_MAX_MB = 100.0
MIN_MAX_MB = 0.1
"""Below this the schema and one interval may not fit."""


def interval_document(
    system: SystemSample, process: ProcessSample, agent: AgentView | None, taken_at: float
) -> dict[str, Any]:
    """What one row of a recording holds: the snapshot document, and under `recording` the rest the
    replay needs to rebuild the TUI's data (sketches, per-worker rows, raw GC and SQL figures...)."""
    doc = snapshot_json(Snapshot(taken_at, system, process, agent))
    extra: dict[str, Any] = {
        "system_taken_at": system.taken_at,
        "interval_s": system.interval_s,
        "process_taken_at": process.taken_at,
        "connections_sampled_at": process.connections_sampled_at,
        "agent": None,
    }
    if agent is not None:
        queries = agent.queries
        extra["agent"] = {
            "info": agent.info,
            "window_s": agent.window_s,
            "taken_at": agent.taken_at,
            "sketches": {name: pack_sketch(sk) for name, sk in agent.sketches.items()},
            "per_pid": {str(pid): rows for pid, rows in agent.per_pid.items()},
            "errors_by_type": agent.errors_by_type,
            "overflow": agent.overflow,
            "gc": agent.gc,
            "queries": None
            if queries is None
            else {"overflow": queries.get("overflow", {}), "slow_ms": queries.get("slow_ms")},
        }
    doc["recording"] = extra
    return doc


class Recorder:
    """Records `pid` every `interval` seconds into a new file at `path`, in a thread of its own.

    `start()` creates the file and checks the process at once (RecordingError says why it cannot);
    `stop()` ends the recording and waits for the thread. It also ends by itself after `duration`
    seconds, or when the process exits (`ended` then says so). `on_finish(recorder)` is called from the
    recording thread when it ends, whatever the reason.
    """

    def __init__(
        self,
        pid: int,
        path: str,
        interval: float = 1.0,
        socket_dir: str | None = None,
        duration: float | None = None,
        max_mb: float = DEFAULT_MAX_MB,
        on_finish: Callable[[Recorder], None] | None = None,
    ) -> None:
        self.pid = pid
        self.path = path
        self.interval = interval
        self.socket_dir = socket_dir
        self.duration = duration
        self.max_mb = max_mb
        self.on_finish = on_finish
        self.error: str | None = None
        """Why the recording failed, if it did."""
        self.ended: str | None = None
        """Why the recording ended by itself (process exited, duration reached), if it did."""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer: RecordingWriter | None = None
        self._process: ProcessCollector | None = None
        self._tree: TreeCollector | None = None

    @property
    def intervals(self) -> int:
        """Intervals written so far."""
        return 0 if self._writer is None else self._writer.rows

    @property
    def dropped(self) -> int:
        """Oldest intervals deleted to keep the file under the cap."""
        return 0 if self._writer is None else self._writer.dropped

    @property
    def running(self) -> bool:
        """Whether the recording thread is still going."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Recorder:
        """Create the file and start the thread; RecordingError if the cap is too small, the process
        cannot be read or the file cannot be created."""
        if self.max_mb < MIN_MAX_MB:
            raise RecordingError(f"--max-mb must be at least {MIN_MAX_MB}")
        from perftop.collectors.process import ProcessCollector
        from perftop.collectors.workers import TreeCollector

        try:
            self._process = ProcessCollector(self.pid)
            self._tree = TreeCollector(self.pid)  # the workers' CPU baseline, from now
            first = self._process.sample()
        except CollectorError as exc:
            raise RecordingError(str(exc)) from None
        meta = {
            "pid": self.pid,
            "started_at": time.time(),
            "interval": self.interval,
            "hostname": socket.gethostname(),
            "perftop_version": __version__,
            "name": first.name,
            "cmdline": list(first.cmdline),
            "max_mb": self.max_mb,
        }
        self._writer = RecordingWriter(self.path, meta, int(self.max_mb * MB))
        self._thread = threading.Thread(target=self._run, name="perftop-recorder", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """End the recording (the interval under way is finished first) and wait for the thread."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the recording to end by itself; True if it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def _run(self) -> None:
        """The recording thread: one interval per tick until stopped, the duration is reached or the
        process exits; the writer is closed and `on_finish` called whatever ends it."""
        from perftop.collectors.agent_client import AgentError
        from perftop.collectors.agent_view import AgentWatcher
        from perftop.collectors.system import SystemCollector

        assert self._writer is not None and self._process is not None and self._tree is not None
        system = SystemCollector()
        watcher = AgentWatcher(self.socket_dir)
        started = time.monotonic()
        next_at = started + self.interval
        try:
            while not self._stopping.wait(max(0.0, next_at - time.monotonic())):
                now = time.monotonic()
                next_at += self.interval
                if next_at < now:  # fell behind (a slow disk, a stopped machine): skip, do not burst
                    next_at = now + self.interval
                sys_sample = system.sample()
                try:
                    proc_sample = self._process.sample()
                except CollectorError as exc:
                    self.ended = str(exc)
                    break
                try:
                    agent = watcher.fetch(self.pid, None)
                except (AgentError, OSError):
                    agent = None
                figures = None if agent is None else agent.figures
                proc_sample = replace(proc_sample, tree=self._tree.sample(proc_sample, figures))
                taken_at = time.time()
                self._writer.append(taken_at, interval_document(sys_sample, proc_sample, agent, taken_at))
                if self.duration is not None and time.monotonic() - started >= self.duration:
                    self.ended = f"{self.duration:g} s recorded"
                    break
        except RecordingError as exc:
            self.error = str(exc)
        except Exception as exc:
            log.exception("recording failed")
            self.error = f"recording failed: {type(exc).__name__}: {exc}"
        finally:
            watcher.close()
            self._writer.close()
            if self.on_finish is not None:
                try:
                    self.on_finish(self)
                except Exception:
                    log.exception("recording on_finish callback failed")
