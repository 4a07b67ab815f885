"""A snapshot of the host, a process and its agents, as the JSON document of the CLI contract or as text.

The JSON keys are those of `perftop snapshot --json` (../shared/CLI.md); recordings store the same document.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from perftop._version import __version__
from perftop.collectors.agent_view import AgentView
from perftop.collectors.model import ProcessSample, ProcessTree, SystemSample
from perftop.render.units import fmt_bytes, fmt_count, fmt_limit, fmt_ms, fmt_rate, safe_text


@dataclass(frozen=True)
class Snapshot:
    """Everything one `perftop snapshot` reports."""

    taken_at: float
    system: SystemSample
    process: ProcessSample | None
    agent: AgentView | None


def snapshot_json(snap: Snapshot) -> dict[str, Any]:
    """The document `perftop snapshot --json` prints (keys as in the CLI contract)."""
    doc: dict[str, Any] = {
        "perftop_version": __version__,
        "taken_at": snap.taken_at,
        "hostname": socket.gethostname(),
        "system": snap.system.to_json(),
        "process": None if snap.process is None else snap.process.to_json(),
    }
    agent = snap.agent
    doc.update(AgentView.empty_json() if agent is None else agent.to_json())
    return doc


def snapshot_text(snap: Snapshot) -> str:
    """A short human-readable report of the same data. App-chosen fields (names, paths) have their control
    characters escaped, line feeds included, so that one cannot forge or disturb a line of the report."""
    s = snap.system
    lines = [
        f"host     cpu {s.cpu_percent:5.1f}%  load {' '.join(f'{x:.2f}' for x in s.load_avg)}"
        f"  cores {' '.join(f'{c:.0f}' for c in s.per_cpu_percent)}",
        f"memory   {fmt_bytes(s.memory.used_bytes)} / {fmt_bytes(s.memory.total_bytes)}"
        f" ({s.memory.percent:.1f}%)  swap {fmt_bytes(s.swap.used_bytes)} / {fmt_bytes(s.swap.total_bytes)}",
        f"disk     read {fmt_rate(s.disk_io.read_bytes_per_s)} ({s.disk_io.read_ops_per_s:.0f} op/s)"
        f"  write {fmt_rate(s.disk_io.write_bytes_per_s)} ({s.disk_io.write_ops_per_s:.0f} op/s)",
        f"network  sent {fmt_rate(s.net_io.sent_bytes_per_s)}  recv {fmt_rate(s.net_io.recv_bytes_per_s)}",
    ]
    if s.pressure:
        psi = "  ".join(f"{name} {p.some_avg10:.1f}%" for name, p in s.pressure.items())
        lines.append(f"pressure {psi} (some, avg10)")
    p = snap.process
    if p is not None:
        lines += [
            "",
            f"process  {p.pid} {_one_line(p.name)} ({p.status}, user {_one_line(p.username)})",
            f"         cpu {p.cpu_percent:.1f}%  rss {fmt_bytes(p.rss_bytes)}  vms {fmt_bytes(p.vms_bytes)}"
            f"  threads {p.num_threads}  fds {fmt_count(p.num_fds)}"
            f"  connections {fmt_count(p.num_connections)}",
        ]
        if p.tree is not None:
            lines += tree_lines(p.tree)
        for lim in p.limits:
            if lim.used is None and lim.soft is None:
                continue
            used = "" if lim.used is None else f"used {fmt_limit(lim.used, lim.unit)} of "
            ratio = "" if lim.ratio is None else f" ({lim.ratio * 100:.0f}%)"
            lines.append(
                f"  limit  {lim.name:<10} {used}{fmt_limit(lim.soft, lim.unit)}"
                f" (hard {fmt_limit(lim.hard, lim.unit)}){ratio}"
            )
        cg = p.cgroup
        if cg is not None:
            cpu = "unlimited" if cg.cpu_limit_cores is None else f"{cg.cpu_limit_cores:g} cores"
            lines.append(
                f"  cgroup v{cg.version} {_one_line(cg.path)}: memory {fmt_bytes(cg.memory_used_bytes)} of "
                f"{fmt_limit(cg.memory_limit_bytes, 'bytes')}, pids {fmt_count(cg.pids_current)} of "
                f"{fmt_limit(cg.pids_limit, '')}, cpu {cpu}"
            )
    agent = snap.agent
    if agent is not None:
        lines += ["", f"agent    {_one_line(agent.describe())}"]
        for name, row in sorted(agent.timings.items(), key=lambda kv: -kv[1]["count"]):
            lines.append(
                f"  {_one_line(name):<32} n={fmt_count(row['count'])} err={row['errors']}"
                f" {row['rate_per_s']:.1f}/s p50={fmt_ms(row['p50_ms'])} p99={fmt_ms(row['p99_ms'])}"
                f" max={fmt_ms(row['max_ms'])}"
            )
    return "\n".join(lines)


def _one_line(text: object) -> str:
    return safe_text(text, newlines=False)


def tree_lines(tree: ProcessTree) -> list[str]:
    """The text report of a process tree: totals, then one line per worker."""
    pss = "" if tree.pss_bytes is None else f"  pss {fmt_bytes(tree.pss_bytes)}"
    departed = f"  departed {tree.departed}" if tree.departed else ""
    lines = [
        f"tree     {len(tree.pids)} processes  cpu {tree.cpu_percent:.1f}%"
        f"  rss {fmt_bytes(tree.rss_bytes)}{pss}  threads {tree.num_threads}  fds {fmt_count(tree.num_fds)}"
        f"  connections {fmt_count(tree.num_connections)}{departed}",
    ]
    for w in tree.workers:
        rate = "-" if w.requests_per_s is None else f"{w.requests_per_s:.1f}/s"
        gone = " (gone)" if w.gone else ""
        lines.append(
            f"  worker {w.pid:>7} {_one_line(w.name):<16} cpu {w.cpu_percent:5.1f}%"
            f"  rss {fmt_bytes(w.rss_bytes)}  req {rate}  p99 {fmt_ms(w.p99_ms)}{gone}"
        )
    return lines
