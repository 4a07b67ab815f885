"""Where the TUI's data comes from: the live collectors, or (in tests) fixed data with the same interface.

The collectors of one attached process (its tree, its agents and their client) are imported when a process
is first sampled, in the sampler's thread: the process list, where most sessions begin, never needs them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from perftop.collectors.model import ProcessRow, ProcessSample, SystemSample
from perftop.collectors.proclist import ProcessLister
from perftop.collectors.system import SystemCollector

if TYPE_CHECKING:
    from perftop.collectors.agent_view import AgentView, AgentWatcher
    from perftop.collectors.process import ProcessCollector
    from perftop.collectors.workers import TreeCollector, WorkerFigures


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

    def call(
        self, pid: int, method: str, params: dict[str, Any], timeout: float, children: bool = True
    ) -> Any:
        """One request to the agent of `pid` (an action, an explain); AgentError says why it failed.
        `children`: from a parent, in its workers (merged); else in `pid` alone."""
        ...

    def forget_departed(self, pid: int) -> None:
        """Drop the rows and the kept data of `pid`'s workers that have exited (the user's reset)."""
        ...


class LiveSources:
    """The real collectors, kept between ticks so that rates and CPU percentages have a baseline."""

    def __init__(self, socket_dir: str | None = None) -> None:
        self.socket_dir = socket_dir
        self._system: SystemCollector | None = None
        self._lister: ProcessLister | None = None
        self._process: ProcessCollector | None = None
        self._tree: TreeCollector | None = None
        self._figures: dict[int, WorkerFigures] = {}
        self._agents: AgentWatcher | None = None

    @property
    def agents(self) -> AgentWatcher:
        """The connections to the attached process's agents, made on first use."""
        if self._agents is None:
            from perftop.collectors.agent_view import AgentWatcher

            self._agents = AgentWatcher(self.socket_dir)
        return self._agents

    def system(self) -> SystemSample:
        if self._system is None:
            self._system = SystemCollector()
        return self._system.sample()

    def processes(self) -> list[ProcessRow]:
        if self._lister is None:
            self._lister = ProcessLister()
        return self._lister.sample()

    def process(self, pid: int) -> ProcessSample:
        """The sample of `pid` with its tree; the workers' request figures are the last agent view's."""
        if self._process is None or self._process.pid != pid:
            from perftop.collectors.process import ProcessCollector
            from perftop.collectors.workers import TreeCollector

            self._process = ProcessCollector(pid)
            self._tree = TreeCollector(pid)
            self._figures = {}
        sample = self._process.sample()
        if self._tree is None:
            return sample
        tree = self._tree.sample(sample, self._figures)
        if tree is not None:  # figures of workers that left the tree are not needed any more
            self._figures = {p: f for p, f in self._figures.items() if p in tree.pids}
        return replace(sample, tree=tree)

    def agent(self, pid: int, window: float | None) -> AgentView | None:
        view = self.agents.fetch(pid, window)
        # A worker that missed one fetch (a loaded machine) keeps its last figures: its row must not
        # flicker to "no agent", nor actions from the parent skip the question of where to run.
        if view is not None and self._process is not None and self._process.pid == pid:
            self._figures = {**self._figures, **view.figures}
        return view

    def forget_departed(self, pid: int) -> None:
        self.agents.reset()
        if self._tree is not None and self._tree.pid == pid:
            self._tree.reset()

    def now(self) -> float:
        import time

        return time.time()

    def call(
        self, pid: int, method: str, params: dict[str, Any], timeout: float, children: bool = True
    ) -> Any:
        """From a parent whose workers run agents, an action runs in every worker at once (merged, each
        worker's result under `per_pid`, why it failed in others under `errors`) and EXPLAIN in a worker
        whose agent recorded the fingerprint; with `children` false, in `pid` alone."""
        from perftop.collectors.agent_client import AgentError, find_child_agents
        from perftop.collectors.agent_view import call_agent
        from perftop.collectors.workers import fan_out, merge_action

        def one(target: int) -> Any:
            if method == "action" and params.get("name") == "profile":
                from perftop.collectors.pyspy import run_profile

                def agent(p: dict[str, Any]) -> Any:
                    return call_agent(target, method, p, self.socket_dir, timeout)

                return run_profile(target, params, params.get("sampler", "auto"), agent)
            return call_agent(target, method, params, self.socket_dir, timeout)

        workers = sorted(find_child_agents(pid, self.socket_dir)) if children else []
        if not workers:
            return one(pid)
        if method == "explain":
            fp = params.get("fingerprint")
            ran = [p for p in (pid, *workers) if p in self._figures and fp in self._figures[p].fingerprints]
            target = ran[0] if ran else pid
            result = one(target)
            return {**result, "per_pid": {target: result}}
        results, errors = fan_out(workers, one)
        if not results:
            raise AgentError("; ".join(f"PID {p}: {why}" for p, why in sorted(errors.items())))
        merged = merge_action(str(params.get("name", method)), results)
        if not isinstance(merged, dict):
            return merged
        return {**merged, "per_pid": results, **({"errors": errors} if errors else {})}
