"""Fixed data for TUI tests: the same interface as the live sources, with deterministic values."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from perftop.collectors.agent_client import AgentError, timing_rows
from perftop.collectors.agent_view import AgentView
from perftop.collectors.errors import NoSuchProcessError
from perftop.collectors.model import (
    CgroupInfo,
    DiskIO,
    Limit,
    MemoryInfo,
    NetIO,
    Pressure,
    ProcessRow,
    ProcessSample,
    SwapInfo,
    SystemSample,
)
from perftop.wire.sketch import Sketch

NOW = 1_790_000_000.0
GiB = 1024**3


def system_sample() -> SystemSample:
    return SystemSample(
        taken_at=NOW,
        interval_s=1.0,
        cpu_percent=37.5,
        per_cpu_percent=(50.0, 25.0),
        load_avg=(0.75, 0.5, 0.25),
        memory=MemoryInfo(24 * GiB, 6 * GiB, 18 * GiB, 25.0),
        swap=SwapInfo(2 * GiB, GiB // 2, 25.0),
        disk_io=DiskIO(1024.0 * 1024, 2048.0 * 1024, 10.0, 20.0),
        net_io=NetIO(512.0 * 1024, 256.0 * 1024),
        pressure={
            "cpu": Pressure(3.5, 2.0, 1.0, None, None, None),
            "memory": Pressure(0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            "io": Pressure(1.25, 1.0, 0.5, 0.5, 0.25, 0.1),
        },
    )


ROWS = [
    ProcessRow(101, "postgres", "postgres -D /var/lib/postgresql", "postgres", 12.0, 300 * 1024**2, 8),
    ProcessRow(202, "python3", "python3 app.py --port 8000", "alice", 55.0, 120 * 1024**2, 12),
    ProcessRow(303, "bash", "bash", "alice", 0.0, 4 * 1024**2, 1),
    ProcessRow(404, "gunicorn", "gunicorn app:wsgi -w 4", "www", 5.0, 800 * 1024**2, 3),
]


def process_sample(pid: int = 202) -> ProcessSample:
    return ProcessSample(
        pid=pid,
        name="python3",
        cmdline=("python3", "app.py", "--port", "8000"),
        status="sleeping",
        username="alice",
        create_time=NOW - 3725,
        cpu_percent=55.0,
        rss_bytes=120 * 1024**2,
        vms_bytes=900 * 1024**2,
        num_threads=12,
        num_fds=870,
        num_connections=14,
        connections_sampled_at=NOW - 2,
        limits=(
            Limit("nofile", 1024, 4096, 870),
            Limit("nproc", 100, 100, 97),
            Limit("as", None, None, 900 * 1024**2, "bytes"),
            Limit("stack", 8 * 1024**2, None, 132 * 1024, "bytes"),
            Limit("core", 0, None, None, "bytes"),
        ),
        cgroup=CgroupInfo(
            version=2,
            path="/system.slice/app.service",
            memory_limit_bytes=512 * 1024**2,
            memory_used_bytes=430 * 1024**2,
            pids_limit=None,
            pids_current=40,
            cpu_limit_cores=1.5,
            cpu_throttled_count=12,
            cpu_throttled_s=3.5,
            oom_kills=0,
        ),
        taken_at=NOW,
    )


def _sketch(values: list[float], errors: int = 0) -> Sketch:
    sk = Sketch()
    for i, v in enumerate(values):
        sk.add(v * 1e6, 1, 1 if i < errors else 0)
    return sk


QUERY_STATS = {
    "queries": [
        {
            "fingerprint": "SELECT id, total FROM orders WHERE customer_id = ?",
            "count": 880,
            "errors": 0,
            "total_ms": 99.4,
            "mean_ms": 0.113,
            "p50_ms": 0.06,
            "p95_ms": 0.29,
            "p99_ms": 0.69,
            "max_ms": 4.6,
            "rows": 0,
            "share_percent": 16.6,
            "n_plus_one": True,
            "n_plus_one_site": {"file": "/srv/shop/views.py", "line": 165, "function": "customer_orders"},
            "dialect": "sqlite",
        },
        {
            "fingerprint": "SELECT id, total FROM orders WHERE status = ? ORDER BY created_at DESC LIMIT ?",
            "count": 45,
            "errors": 1,
            "total_ms": 450.0,
            "mean_ms": 10.0,
            "p50_ms": 9.0,
            "p95_ms": 14.0,
            "p99_ms": 20.0,
            "max_ms": 31.0,
            "rows": 2250,
            "share_percent": 75.0,
            "n_plus_one": False,
            "n_plus_one_site": None,
            "dialect": "sqlite",
        },
    ],
    "slow_queries": [
        {
            "fingerprint": "SELECT id, total FROM orders WHERE status = ? ORDER BY created_at DESC LIMIT ?",
            "duration_ms": 31.0,
            "at": NOW - 3,
            "call_site": {"file": "/srv/shop/views.py", "line": 120, "function": "search"},
            "error": None,
        }
    ],
    "pool": {"size": 4, "checked_out": 1, "overflow": 0, "checkouts_per_s": 47.3, "wait_p99_ms": 0.02},
    "overflow": {"fingerprints_dropped": 0},
    "slow_ms": 25.0,
}

EXPLAIN_RESULT = {
    "fingerprint": QUERY_STATS["queries"][1]["fingerprint"],
    "dialect": "sqlite",
    "statement": "SELECT id, total FROM orders WHERE status = ? ORDER BY created_at DESC LIMIT ?",
    "plan": [{"id": 2, "parent": 0, "detail": "SCAN orders"}],
    "advice": [
        {
            "kind": "index",
            "table": "orders",
            "columns": ["status"],
            "message": "full scan of orders filtered on status: an index would avoid it",
            "sql": "CREATE INDEX ix_orders_status ON orders (status)",
        }
    ],
    "analyzed": False,
}


def agent_view() -> AgentView:
    sketches = {
        "checkout": _sketch([10.0 + (i % 50) for i in range(1000)], errors=25),
        "render": _sketch([1.0 + (i % 10) / 10 for i in range(500)]),
        "gc.gen2": _sketch([5.0, 7.0]),
    }
    stats = {
        "now": NOW,
        "span_s": 100.0,
        "timings": {
            name: {"sketch": sk.to_dict(), "errors_by_type": {"ValueError": sk.errors} if sk.errors else {}}
            for name, sk in sketches.items()
        },
    }
    return AgentView(
        info={"pid": 202, "name": "shop", "python": "3.11.7", "agent_version": "0.1.0", "protocol": 1},
        pids=(202,),
        window_s=None,
        timings=timing_rows(stats),
        sketches=sketches,
        counters={"cache.hit": {"value": 420, "rate_per_s": 4.2}},
        gauges={"queue.depth": 17.0},
        gc={"collections": [10, 2, 1], "collected": [100, 20, 3], "uncollectable": 0},
        queries=QUERY_STATS,
        errors_by_type={"checkout": {"ValueError": 25}},
        taken_at=NOW,
    )


class FixedSources:
    """Deterministic sources. `exit_pid()` makes a PID look exited from then on."""

    def __init__(self, with_agent: bool = True) -> None:
        self.with_agent = with_agent
        self.gone: set[int] = set()
        self.calls = 0
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.hold = threading.Event()
        """Agent calls wait for this until it is set (set by default: calls answer at once)."""
        self.hold.set()
        self.forgotten: list[int] = []
        """PIDs whose departed workers the user asked to forget."""

    def system(self) -> SystemSample:
        self.calls += 1
        return system_sample()

    def processes(self) -> list[ProcessRow]:
        return list(ROWS)

    def process(self, pid: int) -> ProcessSample:
        if pid in self.gone:
            raise NoSuchProcessError(f"process {pid} has exited")
        sample = process_sample(pid)
        row = next((r for r in ROWS if r.pid == pid), None)
        return sample if row is None else replace(sample, name=row.name)

    def agent(self, pid: int, window: float | None) -> AgentView | None:
        return agent_view() if self.with_agent and pid not in self.gone else None

    def now(self) -> float:
        return NOW

    def call(
        self, pid: int, method: str, params: dict[str, Any], timeout: float, children: bool = True
    ) -> Any:
        """Answers explain with a fixed plan; every request is kept in `requests`."""
        self.requests.append((method, dict(params)))
        self.hold.wait(60)
        if method == "explain":
            return {**EXPLAIN_RESULT, "analyzed": bool(params.get("analyze"))}
        raise AgentError(f"{method}: not available in the fixed sources")

    def forget_departed(self, pid: int) -> None:
        self.forgotten.append(pid)

    def exit_pid(self, pid: int) -> None:
        self.gone.add(pid)
