"""`perftop snapshot`: one report of the host, a process and its agents (rendered by `render/snapshot.py`)."""

from __future__ import annotations

import time
from dataclasses import replace

from perftop.collectors.agent_view import fetch_agent_view
from perftop.collectors.process import ProcessCollector
from perftop.collectors.system import SystemCollector
from perftop.collectors.workers import TreeCollector, with_figures
from perftop.render.snapshot import Snapshot


def take_snapshot(
    pid: int | None,
    interval: float,
    window: float | None,
    socket_dir: str | None,
    children: bool = True,
) -> Snapshot:
    """Sample the host (and `pid`, with its descendants unless `children` is false) over `interval`
    seconds; read the agent(s) of `pid` if there are any."""
    system = SystemCollector()
    process = ProcessCollector(pid) if pid is not None else None
    tree = TreeCollector(pid) if pid is not None and children else None  # the children's CPU baseline
    if process is not None:
        process.sample()  # the baseline for cpu_percent
    time.sleep(interval)
    sys_sample = system.sample()
    proc_sample = process.sample() if process is not None else None
    # The tree is read before its agents are asked: the connections to them would count among the
    # workers' fds until each agent has seen them close.
    tree_sample = tree.sample(proc_sample) if tree is not None and proc_sample is not None else None
    agent = fetch_agent_view(pid, window, socket_dir, children) if pid is not None else None
    if tree_sample is not None and proc_sample is not None:
        figures = {} if agent is None else agent.figures
        proc_sample = replace(proc_sample, tree=with_figures(tree_sample, figures))
    return Snapshot(time.time(), sys_sample, proc_sample, agent)
