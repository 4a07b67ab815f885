"""The agent serving a real process over a real Unix socket: hello, stats, history, several viewers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from perftop.collectors.agent_client import (
    AgentClient,
    AgentError,
    RequestFailed,
    find_agent,
    merge_stats,
    socket_dir,
    timing_rows,
)
from perftop.wire import paths
from perftop.wire.protocol import encode
from perftop.wire.sketch import Sketch
from tests.helpers import short_tmp_dir, wait_for
from tests.targets.agent_harness import ROOT, RawViewer, Target, target_env, thread_names


@pytest.fixture
def target() -> Iterator[Target]:
    with short_tmp_dir() as tmp, Target(os.path.join(tmp, "socks")) as t:
        yield t


def test_hello_describes_the_process(target: Target) -> None:
    with AgentClient(target.socket) as client:
        hello = client.hello
        assert hello.role == "agent"
        assert hello.pid == target.pid
        assert hello.name == "agent-target"
        assert hello.argv is not None and hello.argv[0].endswith("agent_target.py")
        assert {"info", "stats", "history"} <= set(hello.capabilities)
        info = client.call("info")
    assert info["pid"] == target.pid
    assert info["protocol"] == 1
    assert info["name"] == "agent-target"
    assert set(info) == {"pid", "protocol", "agent_version", "python", "argv", "started_at", "name"}


def test_stats_match_the_calls_the_target_made(target: Target) -> None:
    assert target.cmd("work 1000") == "done 1000"
    assert target.cmd("errors 4 3") == "done 4 3"
    assert target.cmd("async 25") == "done 25"
    assert target.cmd("timer 30") == "done 30"
    assert target.cmd("count cache.hit 5") == "done"
    assert target.cmd("count cache.hit 7") == "done"
    assert target.cmd("gauge queue.depth 17") == "done"
    for ms in (1, 2, 3, 4, 100):
        assert target.cmd(f"observe upstream {ms}") == "done"
    with AgentClient(target.socket) as client:
        stats = client.call("stats", {"window": None})
    timings = stats["timings"]
    work = Sketch.from_dict(timings["work"]["sketch"])
    assert work.count == 1000 and work.errors == 0
    fails = Sketch.from_dict(timings["fails"]["sketch"])
    assert fails.count == 7 and fails.errors == 7
    assert timings["fails"]["errors_by_type"] == {"KeyError": 4, "ValueError": 3}
    assert Sketch.from_dict(timings["async_work"]["sketch"]).count == 25
    assert Sketch.from_dict(timings["block"]["sketch"]).count == 30
    assert stats["counters"]["cache.hit"]["value"] == 12
    assert stats["counters"]["cache.hit"]["rate_per_s"] > 0
    assert stats["gauges"] == {"queue.depth": 17.0}
    assert stats["window_s"] is None and stats["span_s"] > 0
    assert stats["queries"] is None
    assert len(stats["gc"]["collections"]) == 3
    rows = timing_rows(stats)
    upstream = rows["upstream"]
    assert upstream["count"] == 5
    assert upstream["max_ms"] == pytest.approx(100.0)
    assert upstream["p50_ms"] == pytest.approx(3.0, rel=0.01)
    assert upstream["mean_ms"] == pytest.approx(22.0)
    assert rows["work"]["rate_per_s"] == pytest.approx(1000 / stats["span_s"])
    assert rows["fails"]["errors"] == 7


def test_stats_window_and_bad_params(target: Target) -> None:
    target.cmd("work 50")
    with AgentClient(target.socket) as client:
        stats = client.call("stats", {"window": 10})
        assert stats["window_s"] == 10
        assert Sketch.from_dict(stats["timings"]["work"]["sketch"]).count == 50
        with pytest.raises(RequestFailed, match="window"):
            client.call("stats", {"window": "ten"})
        with pytest.raises(RequestFailed, match="unknown method 'frobnicate'"):
            client.call("frobnicate")
        with pytest.raises(RequestFailed, match="no timing named"):
            client.call("history", {"metric": "nope"})
        with pytest.raises(RequestFailed, match="cannot be sent"):
            client.call("stats", {"window": float("nan")})
        # The connection survives failed requests.
        assert client.call("info")["pid"] == target.pid


def test_two_viewers_at_once(target: Target) -> None:
    target.cmd("work 300")
    results: dict[int, int] = {}
    errors: list[BaseException] = []

    def view(k: int) -> None:
        try:
            with AgentClient(target.socket) as client:
                for _ in range(20):
                    stats = client.call("stats")
                    results[k] = Sketch.from_dict(stats["timings"]["work"]["sketch"]).count
        except BaseException as exc:
            errors.append(exc)

    with AgentClient(target.socket) as a, AgentClient(target.socket) as b:
        assert a.hello.pid == b.hello.pid == target.pid
        threads = [threading.Thread(target=view, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert a.call("info")["pid"] == b.call("info")["pid"]
    assert not errors
    assert results == {0: 300, 1: 300}


def test_late_viewer_sees_history(target: Target) -> None:
    target.cmd("work 400")
    first_slot = int(time.time())
    # Wait until the recorded seconds are in the past (the agent aggregates up to 0.2 s after the calls,
    # maybe in the next second), so that what the late viewer sees must come from the rings.
    wait_for(lambda: time.time() > first_slot + 3, timeout=6)
    target.cmd("work 100")
    with AgentClient(target.socket) as client:
        attached = time.time()
        fine = client.call("history", {"metric": "work", "fine": True})
        coarse = client.call("history", {"metric": "work"})
    assert sum(Sketch.from_dict(sk).count for _start, sk in fine) == 500
    assert sum(Sketch.from_dict(sk).count for _start, sk in coarse) == 500
    assert min(start for start, _sk in fine) < attached - 1
    assert all(start % 10 == 0 for start, _sk in coarse)


def test_find_agent_and_merge_with_a_forked_child(target: Target) -> None:
    target.cmd("work 200")
    line = target.cmd("fork")
    child = int(line.split()[1])
    target.children.append(child)
    child_socket = wait_for(lambda: find_agent(child, target.socket_dir), timeout=10)
    assert child_socket == paths.socket_path(child, target.socket_dir)
    assert child_socket != target.socket
    assert find_agent(target.pid, target.socket_dir) == target.socket
    with AgentClient(child_socket) as c:
        assert c.hello.pid == child
        child_stats = c.call("stats")
    # The child starts with empty stats; the parent's history stays with the parent.
    assert child_stats["timings"].get("work") is None
    assert child_stats["counters"] == {} and child_stats["gauges"] == {}
    with AgentClient(target.socket) as p:
        parent_stats = p.call("stats")
    assert Sketch.from_dict(parent_stats["timings"]["work"]["sketch"]).count == 200
    # And the parent still records and serves after the fork.
    target.cmd("work 50")
    with AgentClient(target.socket) as p:
        parent_stats = p.call("stats")
    assert Sketch.from_dict(parent_stats["timings"]["work"]["sketch"]).count == 250
    merged = merge_stats([parent_stats, child_stats])
    assert timing_rows(merged)["work"]["count"] == 250
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: not paths.pid_alive(child))
    target.children.remove(child)
    assert find_agent(child, target.socket_dir) is None


def test_stale_socket_of_a_dead_pid_is_removed_at_start() -> None:
    with short_tmp_dir() as tmp:
        socks = os.path.join(tmp, "socks")
        with Target(socks) as first:
            line = first.cmd("fork")
            child = int(line.split()[1])
            first.children.append(child)
            child_socket = wait_for(lambda: find_agent(child, socks), timeout=10)
            # SIGKILL: no atexit, so the child's socket file stays behind.
            os.kill(child, signal.SIGKILL)
            wait_for(lambda: not paths.pid_alive(child))
            first.children.remove(child)
            assert os.path.exists(child_socket)
            with pytest.raises(AgentError):
                AgentClient(child_socket, timeout=2)
            with Target(socks):
                assert not os.path.exists(child_socket)


def test_socket_removed_at_exit_and_by_stop() -> None:
    with short_tmp_dir() as tmp:
        socks = os.path.join(tmp, "socks")
        with Target(socks) as t:
            assert os.path.exists(t.socket)
            assert t.cmd("stop") == "stopped"
            assert not os.path.exists(t.socket)
            with pytest.raises(AgentError):
                AgentClient(t.socket, timeout=2)
            # Recording goes on after stop(); the process keeps working, and may serve again.
            assert t.cmd("work 10") == "done 10"
            assert t.cmd("start renamed") == f"started {t.socket}"
            with AgentClient(t.socket) as client:
                assert client.hello.name == "renamed"
                stats = client.call("stats")
            assert Sketch.from_dict(stats["timings"]["work"]["sketch"]).count == 10
        with Target(socks) as t:
            socket_path = t.socket
            t.proc.stdin.write("exit\n")  # type: ignore[union-attr]
            t.proc.stdin.flush()  # type: ignore[union-attr]
            assert t.proc.wait(timeout=20) == 0
            assert not os.path.exists(socket_path)


def test_actions_run_beside_stats_one_at_a_time(target: Target) -> None:
    target.cmd("work 10")
    with RawViewer(target.socket) as profiling, AgentClient(target.socket) as other:
        profiling.hello()
        params = {"name": "profile", "seconds": 1.5}
        profiling.send({"type": "request", "id": 7, "method": "action", "params": params})
        # Requests of one connection are handled in order: once `info` is answered, the profile runs.
        profiling.send({"type": "request", "id": 8, "method": "info", "params": {}})
        assert profiling.read()["id"] == 8  # type: ignore[index]
        busy = wait_for(lambda: _busy_message(other), timeout=10)
        assert busy.startswith("busy: profile running for ")
        # The worker names itself once it is scheduled, which may come after the busy state is visible.
        wait_for(lambda: "perftop-action" in thread_names(target.pid), timeout=10)
        # Stats keep flowing while the profile runs.
        for _ in range(5):
            assert Sketch.from_dict(other.call("stats")["timings"]["work"]["sketch"]).count == 10
        response = profiling.read()
        assert response is not None and response["id"] == 7 and response["ok"], response
        assert "samples" in response["result"]
        assert isinstance(other.call("action", {"name": "gc"}), dict)
        with pytest.raises(RequestFailed, match="unknown action 'fly'"):
            other.call("action", {"name": "fly"})
        with pytest.raises(RequestFailed, match="'seconds' must be a positive number"):
            other.call("action", {"name": "profile", "seconds": -1})
        with pytest.raises(RequestFailed, match="'name' must name an action"):
            other.call("action", {})
        with pytest.raises(RequestFailed):
            other.call("explain", {"fingerprint": "SELECT ?"})
        assert other.call("info")["pid"] == target.pid


def _busy_message(client: AgentClient) -> str | None:
    try:
        client.call("action", {"name": "gc"})
    except RequestFailed as exc:
        return str(exc)
    return None


def test_a_viewer_leaving_cancels_its_action(target: Target) -> None:
    with RawViewer(target.socket) as viewer:
        viewer.hello()
        # Capped at 300 s by the agent; cancelled when this viewer goes away.
        params = {"name": "profile", "seconds": 1e6}
        viewer.send({"type": "request", "id": 1, "method": "action", "params": params})
        viewer.send({"type": "request", "id": 2, "method": "info", "params": {}})
        assert viewer.read()["id"] == 2  # type: ignore[index]
        with AgentClient(target.socket) as other:
            wait_for(lambda: _busy_message(other), timeout=10)
    with AgentClient(target.socket) as other:
        wait_for(lambda: _busy_message(other) is None, timeout=20)


SQL_SCRIPT = """
import json, sys
from sqlalchemy import create_engine, text
import perftop
engine = create_engine("sqlite://")
perftop.instrument_sqlalchemy(engine, slow_ms=1000)
with engine.connect() as conn:
    conn.execute(text("create table t (id integer primary key, x integer)"))
    for i in range(int(sys.argv[1])):
        conn.execute(text("select x from t where id = :id"), {"id": i})
from perftop.agent.sqlalchemy import query_stats
sys.stdout.write(json.dumps({"queries": query_stats(None), "timings": {}, "span_s": 1.0}))
"""


def test_merge_stats_merges_the_queries_of_two_processes() -> None:
    parts = []
    for n in (30, 12):
        proc = subprocess.run(
            [sys.executable, "-c", SQL_SCRIPT, str(n)],
            capture_output=True,
            text=True,
            env=target_env(),
            cwd=str(ROOT),
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        parts.append(json.loads(proc.stdout))
    merged = merge_stats(parts)
    assert merged["processes"] == 2
    rows = {r["fingerprint"]: r for r in merged["queries"]["queries"]}
    select = next(r for fp, r in rows.items() if "where id" in fp.lower())
    assert select["count"] == 42
    sketch = Sketch.from_dict(select["sketch"])
    assert sketch.count == 42
    assert select["p95_ms"] == pytest.approx(sketch.quantile(0.95) / 1e6)  # type: ignore[operator]
    assert sum(r["share_percent"] for r in rows.values()) == pytest.approx(100.0)


def test_a_multiprocessing_worker_serves_and_removes_its_socket(target: Target) -> None:
    worker = int(target.cmd("mpstart").split()[1])
    target.children.append(worker)
    worker_socket = wait_for(lambda: find_agent(worker, target.socket_dir), timeout=10)
    with AgentClient(worker_socket) as client:
        assert client.hello.pid == worker
    # multiprocessing ends its workers with os._exit (no atexit): the socket must go all the same.
    assert target.cmd("mpjoin", timeout=40) == "joined 0"
    target.children.remove(worker)
    assert not os.path.exists(worker_socket)
    with AgentClient(target.socket) as client:
        assert client.call("info")["pid"] == target.pid


def test_find_agent_falls_back_to_the_process_own_listening_socket(target: Target) -> None:
    with short_tmp_dir() as elsewhere:
        # Looking in another directory: the socket is still found through /proc/PID/net/unix.
        assert find_agent(target.pid, elsewhere) == target.socket
    assert find_agent(os.getpid(), target.socket_dir) is None
    assert find_agent(999_999_999, target.socket_dir) is None


def test_socket_dir_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PERFTOP_SOCKET_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert socket_dir() == f"/tmp/perftop-{os.getuid()}"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert socket_dir() == str(tmp_path / "perftop")
    monkeypatch.setenv("PERFTOP_SOCKET_DIR", "/run/somewhere")
    assert socket_dir() == "/run/somewhere"
    assert socket_dir("/explicit") == "/explicit"


@contextlib.contextmanager
def fake_agent(first_frame: bytes | None) -> Iterator[str]:
    """A peer on a real socket that sends `first_frame` (or nothing) to whoever connects."""
    with short_tmp_dir() as tmp:
        path = os.path.join(tmp, "fake.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        server.listen(1)
        held: list[socket.socket] = []

        def serve() -> None:
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                held.append(conn)
                if first_frame is not None:
                    conn.sendall(first_frame)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield path
        finally:
            server.close()
            for conn in held:
                conn.close()
            thread.join(5)


def test_client_reports_a_version_mismatch_clearly() -> None:
    hello = {"type": "hello", "role": "agent", "pid": 1, "protocol": 2}
    with fake_agent(encode(hello)) as path, pytest.raises(AgentError, match="protocol version 2"):
        AgentClient(path)


def test_client_reports_a_refusal_and_silence_and_absence() -> None:
    refusal = encode({"type": "error", "message": "refused: go away"})
    with (
        fake_agent(refusal) as path,
        pytest.raises(AgentError, match="refused the connection: refused: go away"),
    ):
        AgentClient(path)
    with fake_agent(None) as path, pytest.raises(AgentError, match="no answer"):
        AgentClient(path, timeout=0.5)
    with short_tmp_dir() as tmp, pytest.raises(AgentError, match="no agent socket"):
        AgentClient(os.path.join(tmp, "1.sock"))


def test_merge_stats_sums_counters_gauges_and_gc() -> None:
    def stats(values: list[float], counter: int, gauge: float, gen0: int) -> dict[str, object]:
        sk = Sketch()
        for v in values:
            sk.add(v)
        return {
            "now": 100.0,
            "window_s": None,
            "span_s": 10.0,
            "timings": {"t": {"sketch": sk.to_dict(), "errors_by_type": {"KeyError": 1}}},
            "counters": {"c": {"value": counter, "rate_per_s": counter / 10}},
            "gauges": {"g": gauge},
            "overflow": {"metrics_dropped": 1},
            "gc": {"collections": [gen0, 1, 0], "collected": [5, 0, 0], "uncollectable": 0},
            "queries": None,
        }

    a = [1e6 * k for k in range(1, 101)]
    b = [5e6 * k for k in range(1, 301)]
    merged = merge_stats([stats(a, 3, 2.0, 10), stats(b, 4, 5.0, 20)])
    assert merged["processes"] == 2
    assert merged["counters"]["c"] == {"value": 7, "rate_per_s": pytest.approx(0.7)}
    assert merged["gauges"] == {"g": 7.0}
    assert merged["gc"]["collections"] == [30, 2, 0]
    assert merged["overflow"] == {"metrics_dropped": 2}
    assert merged["queries"] is None
    assert merged["timings"]["t"]["errors_by_type"] == {"KeyError": 2}
    row = timing_rows(merged)["t"]
    everything = sorted(a + b)
    assert row["count"] == 400
    assert row["rate_per_s"] == pytest.approx(40.0)
    # The merged p50 is the p50 of all the samples, not the mean of the two p50s.
    assert row["p50_ms"] == pytest.approx(everything[199] / 1e6, rel=0.01)
    assert row["max_ms"] == pytest.approx(1500.0)
    assert merge_stats([])["processes"] == 0
