"""A pre-fork server is one service: a real gunicorn (3 workers) under `perftop run`, attached by its master.

Oracles: psutil's own readings of the master and each worker (tree totals), the requests the test sent
(merged counts), the workers' own agents read one by one with --no-children (where a fingerprint ran).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from perftop.collectors.agent_view import AgentWatcher
from perftop.collectors.discovery import find_child_agents
from perftop.collectors.process import ProcessCollector
from perftop.collectors.workers import TreeCollector
from perftop.tui.sources import LiveSources
from tests.helpers import free_port, perftop_json, refreshing, run_perftop, terminate, wait_count, wait_for
from tests.targets.pool_client import prefork_pool, run_tasks
from tests.targets.workers_client import cpu_seconds

TARGETS = Path(__file__).resolve().parent.parent / "targets"
WORKERS = 3


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    socket_dir: str

    @property
    def master(self) -> int:
        return self.proc.pid

    def get(self, path: str) -> int:
        """One request; the PID of the worker that answered."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as resp:
            return int(resp.read().split()[0])

    def workers(self) -> list[int]:
        return sorted(c.pid for c in psutil.Process(self.master).children())

    def worker_agents(self) -> list[int]:
        return sorted(find_child_agents(self.master, self.socket_dir))

    def perftop(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_perftop(*args, env=self.env, timeout=timeout)

    def json(self, *args: str) -> Any:
        return perftop_json(*args, env=self.env)

    def wait_ready(self, workers: int = WORKERS) -> None:
        """Until `workers` workers run agents and answer."""

        def ready() -> bool:
            agents = self.worker_agents()
            return len(agents) == workers and agents == self.workers()

        wait_for(ready, 60, f"{workers} workers with agents", interval=0.1)


def start_server(tmp: Path, *extra: str) -> Server:
    db = tmp / "app.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE prefork_items (id INTEGER PRIMARY KEY, name TEXT)")
        conn.executemany("INSERT INTO prefork_items (name) VALUES (?)", [(str(i % 7),) for i in range(300)])
    sockets = tmp / "sockets"
    env = {**os.environ, "PERFTOP_SOCKET_DIR": str(sockets), "PREFORK_DB": str(db)}
    port = free_port()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    cmd = [sys.executable, "-m", "perftop", "run", "--", gunicorn, "-w", str(WORKERS)]
    cmd += ["-b", f"127.0.0.1:{port}", "--chdir", str(TARGETS), "--graceful-timeout", "20", *extra]
    with open(tmp / "gunicorn.log", "wb") as log:
        proc = subprocess.Popen([*cmd, "prefork_app:application"], env=env, stderr=log)
    server = Server(proc, port, env, str(sockets))
    try:
        server.wait_ready()
        wait_for(lambda: _answers(server), 30, "the first answer", interval=0.1)
    except BaseException:
        stop_server(server)
        raise
    return server


def _answers(server: Server) -> bool:
    try:
        server.get("/")
    except OSError:
        return False
    return True


def stop_server(server: Server) -> None:
    terminate(server.proc, 30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("prefork"))
    yield s
    stop_server(s)


class Load:
    """`clients` threads requesting `path` in a loop until stopped; counts the answers by worker."""

    def __init__(self, server: Server, path: str, clients: int) -> None:
        self.server, self.path = server, path
        self.by_worker: dict[int, int] = {}
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pid = self.server.get(self.path)
            except OSError:
                with self._lock:
                    self.errors += 1
                continue
            with self._lock:
                self.by_worker[pid] = self.by_worker.get(pid, 0) + 1

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    @property
    def sent(self) -> int:
        with self._lock:
            return sum(self.by_worker.values())


def test_tree_totals_match_the_sum_of_psutil_readings(server: Server) -> None:
    workers = server.workers()
    pids = [server.master, *workers]
    # idle: memory, threads and fds hold still while both sides read them
    doc = server.json("snapshot", "--pid", str(server.master), "--interval", "0.5", "--json")
    procs = [psutil.Process(p) for p in pids]
    tree = doc["process"]["tree"]
    assert tree["pids"] == pids
    assert sorted(w["pid"] for w in tree["workers"]) == workers
    assert all(w["has_agent"] and not w["gone"] and w["ppid"] == server.master for w in tree["workers"])
    assert tree["num_threads"] == sum(p.num_threads() for p in procs)
    assert tree["num_fds"] == sum(p.num_fds() for p in procs)
    rss = sum(p.memory_info().rss for p in procs)
    assert abs(tree["rss_bytes"] - rss) <= 0.05 * rss
    pss = sum(p.memory_full_info().pss for p in procs)
    assert abs(tree["pss_bytes"] - pss) <= 0.05 * pss
    assert tree["pss_bytes"] < tree["rss_bytes"]  # forked workers share pages
    # the master's own figures stay its own
    assert doc["process"]["rss_bytes"] < tree["rss_bytes"]
    # distinct sockets: the listening socket all share counts once
    inodes = {
        os.readlink(f"/proc/{p.pid}/fd/{c.fd}")
        for p in procs
        for c in p.net_connections(kind="all")
        if c.fd >= 0
    }
    assert tree["num_connections"] == len(inodes)

    # busy: the tree's CPU is the workers' (the master idles), against psutil's CPU times over a window
    # that encloses the snapshot's interval
    with Load(server, "/burn", clients=4):
        time.sleep(1.0)
        wall0, cpu0 = time.monotonic(), cpu_seconds(pids)
        busy = server.json("snapshot", "--pid", str(server.master), "--interval", "3", "--json")
        wall1, cpu1 = time.monotonic(), cpu_seconds(pids)
    oracle = 100.0 * (cpu1 - cpu0) / (wall1 - wall0)
    got = busy["process"]["tree"]["cpu_percent"]
    assert oracle > 8.0, oracle  # busy enough to tell the workers' CPU from the idle master's
    assert abs(got - oracle) <= max(6.0, 0.4 * oracle), (got, oracle)
    assert busy["process"]["cpu_percent"] < 0.25 * got  # the master's own stays small
    rows = {w["pid"]: w for w in busy["process"]["tree"]["workers"]}
    assert sum(r["requests"] for r in rows.values()) == sum(
        t["count"] for name, t in busy["timings"].items() if name.startswith("http ")
    )


def test_fan_out_profile_finds_the_planted_loop_in_every_worker(server: Server) -> None:
    workers = server.worker_agents()
    with Load(server, "/burn", clients=6) as load:
        wait_for(lambda: len(load.by_worker) == WORKERS, 60, "every worker answering", interval=0.1)
        doc = server.json("action", "--pid", str(server.master), "profile", "--seconds", "3", "--json")
    per_pid = {int(k): v for k, v in doc["per_pid"].items()}
    assert sorted(per_pid) == workers
    assert doc["samples"] == sum(r["samples"] for r in per_pid.values())
    assert doc["idle_samples"] == sum(r["idle_samples"] for r in per_pid.values())

    def planted(result: dict[str, Any]) -> int:
        return sum(f["self_samples"] for f in result["top"] if f["function"] == "planted_cpu_loop")

    assert all(planted(r) > 0 for r in per_pid.values()), {p: planted(r) for p, r in per_pid.items()}
    assert planted(doc) == sum(planted(r) for r in per_pid.values())
    assert doc["top"][0]["function"] == "planted_cpu_loop"
    assert {t["pid"] for t in doc["threads"]} == set(workers)

    text = server.perftop("action", "--pid", str(server.master), "profile", "--seconds", "0.5")
    assert text.returncode == 0, text.stderr
    assert "samples per worker: " in text.stdout
    assert all(f"{w}: " in text.stdout for w in workers)


def test_explain_from_the_master_runs_where_the_fingerprint_ran(server: Server) -> None:
    ran_in = server.get("/query")
    fingerprint = "SELECT id, name FROM prefork_items WHERE name = ?"
    own = server.json("snapshot", "--pid", str(ran_in), "--no-children", "--interval", "0.1", "--json")
    assert fingerprint in [q["fingerprint"] for q in own["queries"]]
    # the master itself never ran it
    alone = server.perftop(
        "action", "--pid", str(server.master), "--no-children", "explain", "--fingerprint", fingerprint
    )
    assert alone.returncode != 0 and "unknown fingerprint" in alone.stderr
    doc = server.json(
        "action", "--pid", str(server.master), "explain", "--fingerprint", fingerprint, "--json"
    )
    (where,) = doc["per_pid"]
    ran = server.json("snapshot", "--pid", where, "--no-children", "--interval", "0.1", "--json")
    assert fingerprint in [q["fingerprint"] for q in ran["queries"]]
    assert doc["dialect"] == "sqlite" and doc["plan"]
    assert any(a["table"] == "prefork_items" for a in doc["advice"])
    unknown = server.perftop("action", "--pid", str(server.master), "explain", "--fingerprint", "SELECT 42")
    assert unknown.returncode == 2
    assert unknown.stderr.count("\n") == 1 and unknown.stderr.startswith("perftop: no process of PID")


def test_worker_narrows_and_no_children_keeps_to_the_pid(server: Server) -> None:
    workers = server.worker_agents()
    one = server.json("action", "--pid", str(server.master), "--worker", str(workers[1]), "gc", "--json")
    assert list(one["per_pid"]) == [str(workers[1])]
    two = server.json(
        "action", "--pid", str(server.master), "--worker", str(workers[0]), "--worker", str(workers[2]),
        "gc", "--json",
    )  # fmt: skip
    assert sorted(two["per_pid"]) == sorted(str(w) for w in (workers[0], workers[2]))
    assert two["collected"] == sum(r["collected"] for r in two["per_pid"].values())
    master = server.json("action", "--pid", str(server.master), "--no-children", "gc", "--json")
    assert "per_pid" not in master and isinstance(master["collected"], int)
    threads = server.json("action", "--pid", str(server.master), "threads", "--json")
    assert {t["pid"] for t in threads["threads"]} == set(workers)
    assert sorted(threads["per_pid"]) == sorted(map(str, workers))
    for bad in (
        ["--worker", "1", "gc"],
        ["--worker", str(workers[0]), "--no-children", "gc"],
        ["profile", "-o", "merged.json"],  # a speedscope file holds one process
    ):
        out = server.perftop("action", "--pid", str(server.master), *bad)
        assert out.returncode == 2 and out.stderr.startswith("perftop: ") and out.stderr.count("\n") == 1


def _http_count(watcher: AgentWatcher, master: int) -> tuple[int, tuple[int, ...]]:
    view = watcher.fetch(master, None)
    assert view is not None
    return sum(t["count"] for n, t in view.timings.items() if n.startswith("http ")), view.gone_pids


def test_a_killed_workers_last_data_stays_marked_gone(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        watcher = AgentWatcher(server.socket_dir)
        base, _ = _http_count(watcher, server.master)  # the start-up's own requests
        for _ in range(30):
            server.get("/")
        counted, gone = _http_count(watcher, server.master)
        assert (counted, gone) == (base + 30, ())
        victim = server.get("/")
        counted, _ = _http_count(watcher, server.master)  # the last poll before it dies
        assert counted == base + 31
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: victim not in server.workers() and len(server.workers()) == WORKERS,
            60,
            "a new worker",
            interval=0.1,
        )
        server.wait_ready()
        counted, gone = _http_count(watcher, server.master)
        assert counted == base + 31 and gone == (victim,)
        for _ in range(10):
            server.get("/")
        counted, gone = _http_count(watcher, server.master)
        assert counted == base + 41 and gone == (victim,)
        doc = server.json("snapshot", "--pid", str(server.master), "--interval", "0.1", "--json")
        assert victim not in [w["pid"] for w in doc["process"]["tree"]["workers"]]  # a fresh viewer
        watcher.reset()
        counted, gone = _http_count(watcher, server.master)
        assert gone == () and counted < base + 41
        watcher.close()
    finally:
        stop_server(server)


def test_hup_reload_and_max_requests_recycling_keep_the_merged_counts_exact(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--max-requests", "50")
    watcher = AgentWatcher(server.socket_dir)
    try:
        base, _ = _http_count(watcher, server.master)
        # a viewer refreshing while workers come and go
        with (
            refreshing(lambda: watcher.fetch(server.master, None), 0.5),
            Load(server, "/", clients=4) as load,
        ):
            wait_for(lambda: load.sent >= 250, 120, "250 requests", interval=0.1)
            os.kill(server.master, signal.SIGHUP)
            wait_for(lambda: load.sent >= 500, 120, "500 requests", interval=0.1)
        assert load.errors == 0
        expected = base + load.sent
        assert expected - base >= 500  # every worker was recycled several times over
        wait_count(lambda: _http_count(watcher, server.master)[0], expected, "requests answered")
        server.wait_ready()  # no worker half-way out
        view = watcher.fetch(server.master, None)
        # a worker answers 50 requests at most: >= 10 served them, of which 3 at most are still live
        assert view is not None and len(view.gone_pids) >= 7
        assert set(view.gone_pids).isdisjoint(server.workers())
        assert sum(t["count"] for n, t in view.timings.items() if n.startswith("http ")) == expected
        watcher.close()
    finally:
        stop_server(server)


def test_the_tuis_actions_from_the_master_go_to_the_workers(server: Server) -> None:
    server.get("/query")
    fingerprint = "SELECT id, name FROM prefork_items WHERE name = ?"
    sources = LiveSources(socket_dir=server.socket_dir)
    try:
        sources.process(server.master)
        assert sources.agent(server.master, None) is not None  # the workers' figures: who ran what
        plan = sources.call(server.master, "explain", {"fingerprint": fingerprint}, 60)
        (where,) = plan["per_pid"]
        assert where in server.worker_agents() and plan["dialect"] == "sqlite"
        own = server.json("snapshot", "--pid", str(where), "--no-children", "--interval", "0.1", "--json")
        assert fingerprint in [q["fingerprint"] for q in own["queries"]]
        threads = sources.call(server.master, "action", {"name": "threads"}, 60)
        assert {t["pid"] for t in threads} == set(server.worker_agents())
        alone = sources.call(server.master, "action", {"name": "threads"}, 60, children=False)
        assert [t["native_id"] for t in alone if t["name"] == "MainThread"] == [server.master]
    finally:
        sources.agents.close()


def test_children_without_python_still_get_their_rows(tmp_path: Path) -> None:
    parent = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    try:
        wait_for(lambda: len(psutil.Process(parent.pid).children()) == 2, 30, "two children", interval=0.1)
        children = sorted(c.pid for c in psutil.Process(parent.pid).children())
        collector = ProcessCollector(parent.pid)
        trees = TreeCollector(parent.pid)
        tree = trees.sample(collector.sample())
        assert tree is not None
        assert [w.pid for w in tree.workers] == children
        assert all(w.name == "sleep" and not w.has_agent and w.requests_per_s is None for w in tree.workers)
        rss = sum(psutil.Process(p).memory_info().rss for p in [parent.pid, *children])
        assert abs(tree.rss_bytes - rss) <= 0.05 * rss
        os.kill(children[0], signal.SIGKILL)
        wait_for(lambda: len(psutil.Process(parent.pid).children()) == 1, 30, "one child left", interval=0.1)
        tree = trees.sample(collector.sample())
        assert tree is not None and tree.departed == 1 and tree.pids == (parent.pid, children[1])
        assert [(w.pid, w.gone) for w in tree.workers] == [(children[1], False), (children[0], True)]
        trees.reset()
        tree = trees.sample(collector.sample())
        assert tree is not None and tree.departed == 0 and [w.pid for w in tree.workers] == [children[1]]
    finally:
        for child in psutil.Process(parent.pid).children():
            child.kill()
        parent.kill()
        parent.wait(10)


def test_a_multiprocessing_pool_recycling_its_workers_keeps_exact_counts(tmp_path: Path) -> None:
    env = {**os.environ, "PERFTOP_SOCKET_DIR": str(tmp_path / "sockets")}
    with prefork_pool(env, 60) as pool:
        watcher = AgentWatcher(env["PERFTOP_SOCKET_DIR"])
        base, _ = _http_count(watcher, pool.pid)  # the first 3 tasks, in workers still live or gone
        # a viewer refreshing while the pool recycles its workers every 5 tasks
        with refreshing(lambda: watcher.fetch(pool.pid, None), 0.2):
            run_tasks(pool)
        wait_count(lambda: _http_count(watcher, pool.pid)[0], base + 60, "tasks run")
        _, gone = _http_count(watcher, pool.pid)
        assert len(gone) >= 60 // 5 - 3  # 5 tasks per worker: >= 12 workers ran them, 3 at most live
        watcher.close()
        # the exited workers' files are private; older files of dead PIDs were swept by their exits
        finals = list((tmp_path / "sockets").glob("*.final"))
        assert len(finals) >= len(gone) and all(f.stat().st_mode & 0o777 == 0o600 for f in finals)


def test_exiting_workers_sweep_old_final_stats_of_dead_pids(tmp_path: Path) -> None:
    sockets = tmp_path / "sockets"
    sockets.mkdir(mode=0o700)
    dead = subprocess.Popen(["true"])  # a PID that is surely gone
    dead.wait()
    # a dead PID's old file; a dead PID's recent one (PIDs stay below 2**22); a live PID's old one
    stale, fresh, alive = (sockets / f"{p}.final" for p in (dead.pid, 2**22 + 1, 1))
    half = sockets / f"{dead.pid}.final.tmp"  # a worker killed while it wrote its file
    for path, age in ((stale, 600), (fresh, 10), (alive, 600), (half, 600)):
        path.write_text("{}")
        os.utime(path, (time.time() - age, time.time() - age))
    env = {**os.environ, "PERFTOP_SOCKET_DIR": str(sockets)}
    with prefork_pool(env, 10) as pool:
        run_tasks(pool)
        # 13 tasks, 5 at most per worker: one worker at least has left through its finalizers
        planted = {stale, fresh, alive}
        wait_for(lambda: set(sockets.glob("*.final")) - planted, 30, "a worker's final stats", interval=0.1)
        assert not stale.exists() and not half.exists()  # no viewer ran: the exiting workers swept them
        assert fresh.exists() and alive.exists()
