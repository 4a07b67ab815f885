"""Benchmark: 4 threads recording as fast as they can for 10 s; is every call counted, and what does the
agent thread cost?

Run by hand: `.venv/bin/python tests/perf/bench_throughput.py`. The target's 4 threads call a
@time_it no-op in a loop and count their calls; at the end the count read through the socket must equal
the calls made. The agent thread's CPU time comes from /proc/PID/task/TID/stat of the thread the OS
knows as "perftop-agent".
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from perftop.collectors.agent_client import AgentClient, timing_rows
from tests.helpers import short_tmp_dir, wait_for
from tests.perf._common import out
from tests.targets.agent_harness import Target, thread_names

THREADS = 4
SECONDS = 10.0
TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu_s(pid: int, comm: str) -> float:
    """utime + stime of the thread of `pid` named `comm`, in seconds."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            if f.read().strip() != comm:
                continue
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    raise LookupError(f"no thread named {comm} in {pid}")


def process_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def main() -> None:
    with short_tmp_dir() as tmp, Target(os.path.join(tmp, "socks")) as target:
        wait_for(lambda: "perftop-agent" in thread_names(target.pid))
        agent_before = thread_cpu_s(target.pid, "perftop-agent")
        proc_before = process_cpu_s(target.pid)
        started = time.monotonic()
        assert target.cmd(f"spin {THREADS}") == f"spinning {THREADS}"
        time.sleep(SECONDS)
        calls = int(target.cmd("unspin").split()[1])
        elapsed = time.monotonic() - started
        agent_cpu = thread_cpu_s(target.pid, "perftop-agent") - agent_before
        proc_cpu = process_cpu_s(target.pid) - proc_before
        with AgentClient(target.socket) as client:
            stats = client.call("stats")
        counted = timing_rows(stats)["spin"]["count"]
    rate = calls / elapsed / 1e6
    out(f"{THREADS} threads for {elapsed:.1f} s: {calls} calls made ({rate:.2f} M/s), {counted} counted")
    out(f"every call counted: {counted == calls} (difference {counted - calls})")
    out(
        f"agent thread CPU: {agent_cpu:.2f} s = {agent_cpu / elapsed * 100:.1f}% of one core "
        f"(whole process: {proc_cpu / elapsed * 100:.0f}%; {agent_cpu / max(calls, 1) * 1e9:.0f} ns per call)"
    )


if __name__ == "__main__":
    main()
