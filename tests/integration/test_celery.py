"""Celery prefork is one service: a real `celery worker --pool prefork --concurrency 2` under `perftop run`,
attached by its master, driven over a real broker (the machine's Redis; RabbitMQ too for the counts).

Oracles: the tasks the test sent and the results the workers returned (which PID ran each run, when it
started), the exception types the test asked for, psutil's own readings of the master and its pool
children (tree totals), and a publisher's own publish times against the tasks' start times (queue wait).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psutil
import pytest

celery = pytest.importorskip("celery")

from perftop.collectors.agent_view import AgentView, AgentWatcher, fetch_agent_view  # noqa: E402
from perftop.collectors.discovery import find_agent, find_child_agents  # noqa: E402
from tests.helpers import perftop_json, refreshing, run_perftop, terminate, wait_count, wait_for  # noqa: E402
from tests.targets.workers_client import cpu_seconds  # noqa: E402

TARGETS = Path(__file__).resolve().parent.parent / "targets"
CONCURRENCY = 2
BROKERS = {
    "redis": ("redis://127.0.0.1:6379/0", 6379),
    "rabbitmq": ("amqp://guest:guest@127.0.0.1:5672//", 5672),
}
BACKEND = ("redis://127.0.0.1:6379/1", 6379)
"""Results (which PID ran a task, when it started) go through Redis whatever the broker."""
SLACK_S = 0.250
"""How much shorter perftop's queue wait may be than the test's own (publish stamp after the publisher's
clock read, prerun before the task's), on a loaded machine."""
STARTED, DUE, FAIL, FLAKY, BURN, NAP, LOOKUP = (
    f"celery_app.{t}" for t in ("started", "due", "fail", "flaky", "burn", "nap", "lookup")
)


def _need(port: int, what: str) -> None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        pytest.skip(f"{what} is not running on 127.0.0.1:{port}")


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    socket_dir: str
    client: Any
    """A Celery app of the test's own, sending by task name (the test imports no task code)."""
    log: Path
    pool_children: int
    """The prefork pool's processes; 0 for a pool of threads in the master."""

    @property
    def master(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        return sorted(c.pid for c in psutil.Process(self.master).children())

    def agents(self) -> list[int]:
        return sorted(find_child_agents(self.master, self.socket_dir))

    def send(self, name: str, *args: Any, **options: Any) -> Any:
        return self.client.send_task(name, args, **options)

    def run(self, name: str, *args: Any, **options: Any) -> Any:
        """Send one task and wait for its result (an exception instance where it failed)."""
        return self.send(name, *args, **options).get(timeout=120, propagate=False)

    def perftop(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_perftop(*args, env=self.env, timeout=timeout)

    def json(self, *args: str) -> Any:
        return perftop_json(*args, env=self.env)

    def wait_ready(self) -> None:
        """Until every pool child runs an agent, and a task round-trips."""

        def ready() -> bool:
            if not self.pool_children:
                return find_agent(self.master, self.socket_dir) is not None
            agents = self.agents()
            return len(agents) == self.pool_children and agents == self.children()

        wait_for(ready, 90, f"{self.pool_children} pool children with agents", interval=0.1)
        assert isinstance(self.run(STARTED), list)


def start_worker(
    tmp: Path, broker: str, *extra: str, pool: str = "prefork", concurrency: int = CONCURRENCY
) -> Worker:
    url, port = BROKERS[broker]
    _need(port, broker)
    _need(BACKEND[1], "redis (the result backend)")
    queue = f"perftop-test-{uuid.uuid4().hex}"
    sockets = tmp / "sockets"
    env = {
        **os.environ,
        "PERFTOP_SOCKET_DIR": str(sockets),
        "CELERY_BROKER": url,
        "CELERY_BACKEND": BACKEND[0],
        "CELERY_QUEUE": queue,
    }
    client = celery.Celery("perftop-test", broker=url, backend=BACKEND[0])
    client.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=True)
    exe = str(Path(sys.executable).parent / "celery")
    cmd = [sys.executable, "-m", "perftop", "run", "--", exe, "-A", "celery_app", "worker"]
    cmd += ["--pool", pool, "--concurrency", str(concurrency), "-n", f"{queue}@%h", "-l", "info"]
    cmd += ["--without-gossip", "--without-mingle", "--without-heartbeat", *extra]
    log = tmp / f"worker-{queue}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=TARGETS, stdout=out, stderr=subprocess.STDOUT)
    worker = Worker(proc, env, str(sockets), client, log, concurrency if pool == "prefork" else 0)
    try:
        worker.wait_ready()
    except BaseException:
        stop_worker(worker)
        raise
    return worker


def stop_worker(worker: Worker) -> None:
    def kill_children() -> None:
        for child in psutil.Process(worker.master).children(recursive=True):
            child.kill()

    terminate(worker.proc, 60, kill_children)
    try:
        with worker.client.connection_for_write() as conn:
            conn.default_channel.queue_delete(worker.client.conf.task_default_queue)
    except Exception as exc:  # the broker went away: nothing left to clean
        sys.stderr.write(f"could not delete the test queue: {exc}\n")
    worker.client.close()


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Worker]]:
    """One worker per broker, started on first use and shared by the module's tests."""
    started: dict[str, Worker] = {}

    def get(broker: str) -> Worker:
        if broker not in started:
            started[broker] = start_worker(tmp_path_factory.mktemp(broker), broker)
        return started[broker]

    yield get
    for worker in started.values():
        stop_worker(worker)


@pytest.fixture
def worker(workers: Callable[[str], Worker]) -> Worker:
    w = workers("redis")
    w.wait_ready()  # a test before may have killed a pool child
    return w


def _view(watcher: AgentWatcher, master: int) -> AgentView:
    view = watcher.fetch(master, None)
    assert view is not None
    return view


def _count(view: AgentView, name: str) -> int:
    return int(view.timings.get(name, {}).get("count", 0))


def _settled(watcher: AgentWatcher, master: int, counts: dict[str, int]) -> AgentView:
    """The merged view once its timings reach `counts`: a run is recorded just after its result is
    stored (Celery's postrun comes after), so the test may see the result first."""
    views: list[AgentView] = []

    def reached() -> bool:
        views.append(_view(watcher, master))
        return all(_count(views[-1], name) >= n for name, n in counts.items())

    wait_for(reached, 30, f"the counts {counts}", interval=0.1)
    return views[-1]


def _task_count(watcher: AgentWatcher, master: int) -> tuple[int, tuple[int, ...]]:
    view = _view(watcher, master)
    return _count(view, f"celery {STARTED}"), view.gone_pids


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_tasks_are_timed_by_name_with_failures_by_type_merged_from_the_pool(
    workers: Callable[[str], Worker], broker: str
) -> None:
    worker = workers(broker)
    watcher = AgentWatcher(worker.socket_dir)
    try:
        before = _view(watcher, worker.master)
        base = {n: _count(before, f"celery {n}") for n in (STARTED, FAIL, FLAKY)}
        base_errors = {n: Counter(before.errors_by_type.get(f"celery {n}", {})) for n in (FAIL, FLAKY)}
        base_retries = _count(before, f"celery.queue {FLAKY}")
        base_pids = {p: _count_in(before, p, f"celery {STARTED}") for p in worker.children()}
        sent = [worker.send(STARTED) for _ in range(24)]
        sent += [worker.send(FAIL, "ValueError") for _ in range(3)]
        sent += [worker.send(FAIL, "KeyError") for _ in range(2)]
        sent += [worker.send(FLAKY) for _ in range(2)]
        results = [r.get(timeout=120, propagate=False) for r in sent]
        ran_in = Counter(pid for pid, _start in results[:24])
        assert [type(r).__name__ for r in results[24:29]] == ["ValueError"] * 3 + ["KeyError"] * 2
        assert all(isinstance(r, int) for r in results[29:])

        expected = {f"celery {STARTED}": base[STARTED] + 24, f"celery {FAIL}": base[FAIL] + 5}
        view = _settled(watcher, worker.master, {**expected, f"celery {FLAKY}": base[FLAKY] + 4})
        started = view.timings[f"celery {STARTED}"]
        assert (started["count"], started["errors"]) == (base[STARTED] + 24, 0)
        failed = view.timings[f"celery {FAIL}"]
        assert failed["count"] == base[FAIL] + 5 and failed["errors"] == failed["count"]
        assert Counter(view.errors_by_type[f"celery {FAIL}"]) == base_errors[FAIL] + Counter(
            {"ValueError": 3, "KeyError": 2}
        )
        flaky = view.timings[f"celery {FLAKY}"]  # each ran twice: a Retry, then done
        assert flaky["count"] == base[FLAKY] + 4
        assert Counter(view.errors_by_type[f"celery {FLAKY}"]) == base_errors[FLAKY] + Counter({"Retry": 2})
        # merged from the pool: each child's own agent counted the runs its results say it ran
        assert set(view.pids) == {worker.master, *worker.children()}
        for pid in worker.children():
            assert _count_in(view, pid, f"celery {STARTED}") == base_pids[pid] + ran_in.get(pid, 0)
        # the test's own messages carry no publish time: no queue wait is made up for them; the retries
        # were published by the pool children, under perftop, so theirs is known
        assert f"celery.queue {STARTED}" not in view.timings
        assert view.timings[f"celery.queue {FLAKY}"]["count"] == base_retries + 2
        assert view.timings[f"celery.queue {FLAKY}"]["max_ms"] < 60_000
    finally:
        watcher.close()


def _count_in(view: AgentView, pid: int, name: str) -> int:
    return int(view.per_pid.get(pid, {}).get(name, {}).get("count", 0))


def test_queue_wait_from_a_publisher_under_perftop_matches_its_own_publish_times(worker: Worker) -> None:
    watcher = AgentWatcher(worker.socket_dir)
    try:
        before = _count(_view(watcher, worker.master), f"celery.queue {STARTED}")
        # two 1.5 s burns keep both pool children busy: the `started` tasks published next wait ~1.5 s
        cmd = [sys.executable, "-m", "perftop", "run", "--", sys.executable, str(TARGETS / "celery_app.py")]
        out = subprocess.run(
            [*cmd, "publish", str(CONCURRENCY), "6"],
            env=worker.env,
            cwd=TARGETS,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        runs = [json.loads(line) for line in out.stdout.splitlines()]
        assert len(runs) == 6
        oracle = sorted(r["started"] - r["sent"] for r in runs)
        assert oracle[0] > 0.5, oracle  # they did wait behind the burns
        view = _settled(watcher, worker.master, {f"celery.queue {STARTED}": before + 6})
        wait = view.timings[f"celery.queue {STARTED}"]
        assert wait["count"] == before + 6
        assert before == 0  # the test's own messages never got one (see the counts test)
        # perftop's wait runs from the publish stamp (taken inside apply_async, after the publisher's own
        # clock read) to the task's prerun (before the task's own clock read): a little shorter than the
        # oracle's, never longer (beyond the sketch's 1%). Tolerance: SLACK_S of apply_async and tracing.
        for key, expected in (("min_ms", oracle[0]), ("max_ms", oracle[-1])):
            got = wait[key] / 1000
            assert expected - SLACK_S <= got <= expected * 1.01 + 0.001, (key, got, oracle)
        mean = sum(oracle) / len(oracle)
        assert mean - SLACK_S <= wait["mean_ms"] / 1000 <= mean * 1.01 + 0.001, (wait, oracle)
        assert view.timings[f"celery.queue {BURN}"]["count"] >= CONCURRENCY
    finally:
        watcher.close()


def test_a_task_with_an_eta_waits_from_when_it_was_due(worker: Worker) -> None:
    """The test's message has no publish stamp, but its ETA says since when it was due."""
    watcher = AgentWatcher(worker.socket_dir)
    try:
        before = _count(_view(watcher, worker.master), f"celery.queue {DUE}")
        eta = datetime.now(timezone.utc) + timedelta(seconds=1.5)
        _pid, started = worker.run(DUE, eta=eta)
        oracle = started - eta.timestamp()
        assert oracle >= 0
        view = _settled(watcher, worker.master, {f"celery.queue {DUE}": before + 1, f"celery {DUE}": 1})
        wait = view.timings[f"celery.queue {DUE}"]
        assert wait["count"] == before + 1
        # not the 1.5 s to the ETA: the lateness past it (tolerance as for the publish stamp)
        assert oracle - SLACK_S <= wait["max_ms"] / 1000 <= oracle * 1.01 + 0.001, (wait, oracle)
    finally:
        watcher.close()


def _threads_fds(procs: list[psutil.Process]) -> tuple[int, int]:
    return sum(p.num_threads() for p in procs), sum(p.num_fds() for p in procs)


def test_tree_totals_match_the_sum_of_psutil_readings_of_the_pool(worker: Worker) -> None:
    children = worker.children()
    pids = [worker.master, *children]
    procs = [psutil.Process(p) for p in pids]
    before = _threads_fds(procs)
    doc = worker.json("snapshot", "--pid", str(worker.master), "--interval", "0.5", "--json")
    after = _threads_fds(procs)
    tree = doc["process"]["tree"]
    assert tree["pids"] == pids
    rows = {w["pid"]: w for w in tree["workers"]}
    assert sorted(rows) == children
    assert all(r["has_agent"] and not r["gone"] and r["ppid"] == worker.master for r in rows.values())
    # idle, threads and fds are read by psutil just before and after the snapshot (the broker connection's
    # heartbeats may open and close one between): the tree's figure is one of the two; memory within 5%
    assert tree["num_threads"] in (before[0], after[0]), (tree["num_threads"], before, after)
    assert tree["num_fds"] in (before[1], after[1]), (tree["num_fds"], before, after)
    rss = sum(p.memory_info().rss for p in procs)
    assert abs(tree["rss_bytes"] - rss) <= 0.05 * rss
    # the worker table's requests are the children's task runs
    assert sum(r["requests"] for r in rows.values()) == sum(
        t["count"] for name, t in doc["timings"].items() if name.startswith("celery ")
    )

    # busy: the tree's CPU is the pool's, against psutil's CPU times read by a thread of the test every
    # 50 ms, over the snapshot's own interval (the 2 s before its `taken_at`), not around the whole CLI
    # run: on 2 cores the CLI's start-up takes CPU from the pool, so a wider window reads the pool lower.
    # Tolerance: 6 points or 40%, as for gunicorn: the machine is shared. The burns (10 s a child)
    # outlast the CLI's run, so the pool is busy all through.
    burns = [worker.send(BURN, 1.0) for _ in range(10 * CONCURRENCY)]
    time.sleep(0.5)
    readings: list[tuple[float, float]] = []
    done = threading.Event()

    def read_cpu() -> None:
        while not done.is_set():
            readings.append((time.time(), cpu_seconds(pids)))
            time.sleep(0.05)

    reader = threading.Thread(target=read_cpu)
    reader.start()
    try:
        busy = worker.json("snapshot", "--pid", str(worker.master), "--interval", "2", "--json")
    finally:
        done.set()
        reader.join()
    for r in burns:
        r.get(timeout=120)
    end = float(busy["taken_at"])
    t0, c0 = max((r for r in readings if r[0] <= end - 2.0), default=readings[0])
    t1, c1 = max((r for r in readings if r[0] <= end), default=readings[-1])
    oracle = 100.0 * (c1 - c0) / (t1 - t0)
    got = busy["process"]["tree"]["cpu_percent"]
    assert oracle > 8.0, oracle
    assert abs(got - oracle) <= max(6.0, 0.4 * oracle), (got, oracle)
    assert busy["process"]["cpu_percent"] < 0.25 * got  # the master only hands out the messages


def test_fan_out_profile_from_the_master_finds_the_planted_loop_in_the_pool(worker: Worker) -> None:
    children = worker.agents()
    burns = [worker.send(BURN, 1.0) for _ in range(5 * CONCURRENCY)]
    try:
        time.sleep(0.3)
        doc = worker.json("action", "--pid", str(worker.master), "profile", "--seconds", "3", "--json")
    finally:
        ran = {r.get(timeout=120) for r in burns}
    assert ran == set(children)
    per_pid = {int(k): v for k, v in doc["per_pid"].items()}
    assert sorted(per_pid) == children
    assert doc["samples"] == sum(r["samples"] for r in per_pid.values())

    def planted(result: dict[str, Any]) -> int:
        return sum(f["self_samples"] for f in result["top"] if f["function"] == "planted_cpu_loop")

    assert all(planted(r) > 0 for r in per_pid.values()), {p: planted(r) for p, r in per_pid.items()}
    assert planted(doc) == sum(planted(r) for r in per_pid.values())
    assert {t["pid"] for t in doc["threads"]} == set(children)


def test_max_tasks_per_child_recycling_keeps_the_merged_count_exact(tmp_path: Path) -> None:
    worker = start_worker(tmp_path, "redis", "--max-tasks-per-child", "3")
    watcher = AgentWatcher(worker.socket_dir)
    try:
        base, _ = _task_count(watcher, worker.master)
        # a viewer refreshing while the pool recycles its children
        with refreshing(lambda: watcher.fetch(worker.master, None), 0.3):
            results = [r.get(timeout=120) for r in [worker.send(STARTED) for _ in range(30)]]
        ran_in = {pid for pid, _ in results}
        assert len(ran_in) >= 30 // 3  # 3 runs at most per child

        wait_count(lambda: _task_count(watcher, worker.master)[0], base + 30, "tasks run")
        worker.wait_ready()
        _, gone = _task_count(watcher, worker.master)
        assert set(gone).isdisjoint(worker.children())
        assert ran_in - set(worker.children()) <= set(gone)  # every recycled child that ran one is kept
        finals = list(Path(worker.socket_dir).glob("*.final"))
        assert finals and all(f.stat().st_mode & 0o777 == 0o600 for f in finals)
        watcher.close()
    finally:
        stop_worker(worker)


def test_a_snapshot_taken_after_the_pool_recycled_counts_the_recycled_childrens_tasks(tmp_path: Path) -> None:
    """No viewer attached while the children were recycled: a later one-shot snapshot still counts every
    task they ran (their final stats), as many as the results returned."""
    worker = start_worker(tmp_path, "redis", "--max-tasks-per-child", "2")
    try:
        ran_in = {pid for pid, _ in (worker.run(STARTED) for _ in range(8))}
        assert len(ran_in) >= 8 // 2
        wait_for(
            lambda: len(ran_in - set(worker.children())) >= 2,
            60,
            "children that ran them to be recycled",
            interval=0.1,
        )
        expected = 1 + 8  # wait_ready's round trip, then the test's
        seen: list[int] = []

        def counted() -> bool:
            view = fetch_agent_view(worker.master, None, worker.socket_dir)
            seen.append(_count(view, f"celery {STARTED}") if view is not None else -1)
            return seen[-1] >= expected

        try:
            wait_for(counted, 60, "a fresh viewer to count every task", interval=0.1)
        except AssertionError:
            raise AssertionError(f"one-shot counts {seen[-5:]}, tasks run {expected}") from None
        assert seen[-1] == expected
        snapshot = worker.json("snapshot", "--pid", str(worker.master), "--json")
        assert snapshot["timings"][f"celery {STARTED}"]["count"] == expected
    finally:
        stop_worker(worker)


def test_a_query_run_once_per_task_on_a_kept_connection_is_no_n_plus_one(tmp_path: Path) -> None:
    """Each task is a unit of work, as a request is: a Django query run once by each of 15 tasks on the
    pool child's one connection is no N+1; 12 runs of it inside one task are, at the task's line."""
    worker = start_worker(tmp_path, "redis", concurrency=1)
    try:
        assert len({worker.run(LOOKUP, n) for n in range(15)}) == 1  # one child, one connection
        snapshot: dict[str, Any] = {}

        def counted(n: int) -> bool:
            snapshot.update(worker.json("snapshot", "--pid", str(worker.master), "--json"))
            return any(q["fingerprint"] == "SELECT ?" and q["count"] == n for q in snapshot["queries"])

        wait_for(lambda: counted(15), 60, "the 15 queries of 15 tasks", interval=0.1)
        query = next(q for q in snapshot["queries"] if q["fingerprint"] == "SELECT ?")
        assert not query["n_plus_one"], query

        worker.run(LOOKUP, 7, 12)
        wait_for(lambda: counted(27), 60, "the 12 queries of one task", interval=0.1)
        query = next(q for q in snapshot["queries"] if q["fingerprint"] == "SELECT ?")
        app = TARGETS / "celery_app.py"
        line = next(n for n, text in enumerate(app.read_text().splitlines(), 1) if text.endswith("# LOOKUP"))
        assert query["n_plus_one"] and query["n_plus_one_site"]["file"] == str(app), query
        assert query["n_plus_one_site"]["line"] == line, query
    finally:
        stop_worker(worker)


def test_an_eager_task_inside_a_request_stays_part_of_the_requests_n_plus_one() -> None:
    """A task run eagerly in a request's loop (Celery's `apply`) starts no unit of work of its own: the
    request's 12 runs of one query on its connection are still an N+1."""
    pytest.importorskip("django")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERFTOP")}
    out = subprocess.run(
        [sys.executable, str(TARGETS / "celery_django_eager.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"count": 12, "n_plus_one": True}


def test_a_killed_pool_childs_last_data_stays_marked_gone(worker: Worker) -> None:
    watcher = AgentWatcher(worker.socket_dir)
    try:
        base, gone = _task_count(watcher, worker.master)
        assert gone == ()
        pids = [worker.run(STARTED)[0] for _ in range(10)]
        _settled(watcher, worker.master, {f"celery {STARTED}": base + 10})  # the last poll before it dies
        victim = pids[-1]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in worker.children(), 60, "the killed child to go", interval=0.1)
        worker.wait_ready()  # billiard replaced it; one more task ran
        _settled(watcher, worker.master, {f"celery {STARTED}": base + 11})
        counted, gone = _task_count(watcher, worker.master)
        assert (counted, gone) == (base + 11, (victim,))
        for _ in range(5):
            worker.run(STARTED)
        _settled(watcher, worker.master, {f"celery {STARTED}": base + 16})
        counted, gone = _task_count(watcher, worker.master)
        assert (counted, gone) == (base + 16, (victim,))
        rows = _view(watcher, worker.master)
        assert victim in rows.pids
        watcher.reset()
        counted, gone = _task_count(watcher, worker.master)
        assert gone == () and counted < base + 16
    finally:
        watcher.close()


def test_a_task_killed_by_its_hard_time_limit_is_counted_lost_by_the_master(worker: Worker) -> None:
    watcher = AgentWatcher(worker.socket_dir)
    try:
        name = f"celery.lost {BURN}"
        base = int(_view(watcher, worker.master).counters.get(name, {}).get("value", 0))
        result = worker.run(BURN, 30.0, time_limit=1)
        assert type(result).__name__ == "TimeLimitExceeded"
        wait_for(
            lambda: _view(watcher, worker.master).counters.get(name, {}).get("value") == base + 1,
            30,
            "the lost task to be counted",
            interval=0.1,
        )
        # the master counted it: the child that ran it was killed before its run could end
        own = worker.json(
            "snapshot", "--pid", str(worker.master), "--no-children", "--interval", "0.1", "--json"
        )
        assert own["counters"][name]["value"] == base + 1
    finally:
        watcher.close()


def test_concurrent_runs_in_a_thread_pool_are_timed_each_on_its_own(tmp_path: Path) -> None:
    """Eight runs at once in one process (`--pool threads`): each timed from its own start (keyed by
    task id), none from another's."""
    worker = start_worker(tmp_path, "redis", pool="threads", concurrency=8)
    watcher = AgentWatcher(worker.socket_dir)
    try:
        slept = [r.get(timeout=120) for r in [worker.send(NAP, 0.3) for _ in range(8)]]
        view = _settled(watcher, worker.master, {f"celery {NAP}": 8})
        timing = view.timings[f"celery {NAP}"]
        assert (timing["count"], timing["errors"]) == (8, 0)
        # each run at least the sleep its own clock measured (within the sketch's 1%): none was timed
        # from a later run's start; at most that plus 250 ms of Celery's tracing (storing the result in
        # Redis included) on a loaded machine
        assert timing["min_ms"] >= min(slept) * 1000 * 0.99, (timing, slept)
        assert timing["max_ms"] <= max(slept) * 1000 * 1.01 + 250, (timing, slept)
    finally:
        watcher.close()
        stop_worker(worker)
