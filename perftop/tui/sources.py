"""Where the TUI's data comes from: the live collectors, or (in tests) fixed data with the same interface."""

from __future__ import annotations

from typing import Any, Protocol

from perftop.collectors.agent_view import AgentView, AgentWatcher, call_agent
from perftop.collectors.model import ProcessRow, ProcessSample, SystemSample
from perftop.collectors.process import ProcessCollector
from perftop.collectors.proclist import ProcessLister
from perftop.collectors.system import SystemCollector


class Sources(Protocol):
    """The data the TUI shows. Every method may block: only the sampler thread calls them."""

    def system(self) -> SystemSample: ...

    def processes(self) -> list[ProcessRow]: ...

    def process(self, pid: int) -> ProcessSample:
        """Raises perftop.collectors.errors.CollectorError when the process is gone or unreadable."""
        ...

    def agent(self, pid: int, window: float | None) -> AgentView | None:
        """The agent data of `pid` (and its children), or None where it has no agent."""
        ...

    def now(self) -> float:
        """The clock the panes use for ages and uptimes (fixed in tests)."""
        ...

    def call(self, pid: int, method: str, params: dict[str, Any], timeout: float) -> Any:
        """One request to the agent of `pid` (an action, an explain); AgentError says why it failed."""
        ...


class LiveSources:
    """The real collectors, kept between ticks so that rates and CPU percentages have a baseline."""

    def __init__(self, socket_dir: str | None = None) -> None:
        self.socket_dir = socket_dir
        self._system: SystemCollector | None = None
        self._lister: ProcessLister | None = None
        self._process: ProcessCollector | None = None
        self.agents = AgentWatcher(socket_dir)

    def system(self) -> SystemSample:
        if self._system is None:
            self._system = SystemCollector()
        return self._system.sample()

    def processes(self) -> list[ProcessRow]:
        if self._lister is None:
            self._lister = ProcessLister()
        return self._lister.sample()

    def process(self, pid: int) -> ProcessSample:
        if self._process is None or self._process.pid != pid:
            self._process = ProcessCollector(pid)
        return self._process.sample()

    def agent(self, pid: int, window: float | None) -> AgentView | None:
        return self.agents.fetch(pid, window)

    def now(self) -> float:
        import time

        return time.time()

    def call(self, pid: int, method: str, params: dict[str, Any], timeout: float) -> Any:
        if method == "action" and params.get("name") == "profile":
            from perftop.collectors.pyspy import run_profile

            def agent(p: dict[str, Any]) -> Any:
                return call_agent(pid, method, p, self.socket_dir, timeout)

            return run_profile(pid, params, params.get("sampler", "auto"), agent)
        return call_agent(pid, method, params, self.socket_dir, timeout)
