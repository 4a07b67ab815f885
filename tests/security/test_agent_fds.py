"""An app that closes every fd after `perftop.start()` (a daemonizing app) and reuses the numbers.

The agent must never read, write or close an fd that is no longer its own (the app's TCP peer receives
exactly what the app sent, nothing more, and no connection of the app's is closed under it), must serve
again on a new socket, and its pending buffers must stay bounded whatever happens to its thread.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from perftop.agent.recorder import MAX_PENDING
from perftop.collectors.agent_client import AgentClient, AgentError
from tests.helpers import short_tmp_dir, wait_for
from tests.targets.agent_harness import Target

LC_TARGET = Path(__file__).resolve().parents[1] / "targets" / "lc_target.py"
TCP_CONNECTIONS = 8


class TcpPeer:
    """The app's TCP peer: accepts connections and keeps every byte each one receives, until EOF."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received: list[bytearray] = []
        self.eof: list[bool] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                index = len(self.received)
                self.received.append(bytearray())
                self.eof.append(False)
            threading.Thread(target=self._read, args=(conn, index), daemon=True).start()

    def _read(self, conn: socket.socket, index: int) -> None:
        with conn:
            while data := conn.recv(65536):
                with self._lock:
                    self.received[index] += data
        with self._lock:
            self.eof[index] = True

    def by_first_line(self) -> dict[str, bytes]:
        """What each connection received, keyed by its first line (`app I`)."""
        with self._lock:
            return {bytes(r).split(b"\n", 1)[0].decode(errors="replace"): bytes(r) for r in self.received}

    def close(self) -> None:
        self.listener.close()


@contextlib.contextmanager
def reused_fds() -> Iterator[tuple[Target, TcpPeer]]:
    """A target that closed every fd and reused the numbers for TCP connections to a peer.

    The agent's old fds must be among the reused ones, else the test would test nothing; the agent
    thread may (rarely) make new sockets between the close and the connects and take the numbers first,
    so a target where that happened is replaced by a fresh one.
    """
    attempts: list[str] = []
    for _attempt in range(5):
        with short_tmp_dir() as tmp, Target(os.path.join(tmp, "socks"), script=LC_TARGET) as target:
            peer = TcpPeer()
            try:
                assert answers(target.socket)
                before = [int(fd) for fd in target.cmd("agentfds").split()[1:]]
                assert before, "the agent holds no fd"
                tcp = [int(fd) for fd in target.cmd(f"close {peer.port} {TCP_CONNECTIONS}").split()[1:]]
                if not set(before) & set(tcp):
                    attempts.append(f"agent had {before}, the app's TCP connections got {tcp}")
                    continue
                wait_for(lambda p=peer: len(p.received) == TCP_CONNECTIONS)
                yield target, peer
                return
            finally:
                peer.close()
    pytest.fail(f"the app's connections never reused the agent's fds: {attempts}")


def answers(path: str) -> bool:
    try:
        with AgentClient(path, timeout=5.0) as client:
            return bool(client.call("info")["pid"])
    except AgentError:
        return False


def assert_peer_got_only_the_apps_bytes(peer: TcpPeer, with_bye: bool) -> None:
    wait_for(lambda: all(peer.eof), timeout=20)
    got = peer.by_first_line()
    expected = {f"app {i}": f"app {i}\n{f'bye {i}' + chr(10) if with_bye else ''}".encode() for i in range(8)}
    assert got == expected


def test_the_agent_serves_again_and_never_touches_the_apps_fds() -> None:
    with reused_fds() as (target, peer):
        # A new socket at the same path within a few flush intervals (generous: the machine is loaded).
        wait_for(lambda: answers(target.socket), timeout=15)
        with AgentClient(target.socket, timeout=20) as client:
            assert target.cmd("work 1000") == "done 1000"
            threads = client.call("action", {"name": "threads"}, timeout=20)  # the worker wakes the agent
            assert any(t["main"] for t in threads)
            wait_for(lambda: client.call("stats")["timings"].get("work", {}).get("sketch", {}).get("count"))
            stats = client.call("stats")
            assert stats["overflow"]["fds_lost"] >= 1
        # Every connection of the app's is still open and usable after the agent's recovery.
        assert not any(peer.eof)
        assert target.cmd("bye") == "sent"
        target.proc.stdin.write("exit\n")  # type: ignore[union-attr]
        target.proc.stdin.flush()  # type: ignore[union-attr]
        assert target.proc.wait(timeout=20) == 0
        assert_peer_got_only_the_apps_bytes(peer, with_bye=True)
        assert "made new ones" in target.stderr


def test_at_exit_right_after_the_fds_were_closed_nothing_is_written() -> None:
    """The original bug: at exit the agent wrote its wake-up byte into the app's reused fd."""
    with reused_fds() as (target, peer):
        target.proc.stdin.write("exit\n")  # type: ignore[union-attr]
        target.proc.stdin.flush()  # type: ignore[union-attr]
        assert target.proc.wait(timeout=20) == 0
        assert_peer_got_only_the_apps_bytes(peer, with_bye=False)


def test_pending_buffers_stay_bounded_while_the_agent_thread_is_stuck() -> None:
    """The agent thread blocked (here behind the drain lock): past MAX_PENDING calls are dropped and
    counted, and once it runs again the recorded plus the dropped are exactly the calls made."""
    calls = MAX_PENDING + 50_000
    with short_tmp_dir() as tmp, Target(os.path.join(tmp, "socks"), script=LC_TARGET) as target:
        words = target.cmd(f"stall {calls}", timeout=300).split()[1:]
        report = {words[i]: (int(words[i + 1]), int(words[i + 2])) for i in range(0, len(words), 3)}
        # Every hot path: the decorator, timer(), count() and observe().
        expected = (MAX_PENDING, calls - MAX_PENDING)
        assert report == {name: expected for name in ("work", "block", "hits", "lat")}
        with AgentClient(target.socket, timeout=20) as client:

            def recorded() -> tuple[int, ...]:
                stats = client.call("stats")
                timings = [stats["timings"].get(name) for name in ("work", "block", "lat")]
                counted = [int(t["sketch"]["count"]) if t else 0 for t in timings]
                return (*counted, int(stats["counters"].get("hits", {}).get("value", 0)))

            wait_for(lambda: recorded() == (MAX_PENDING,) * 4, timeout=30)
            overflow = client.call("stats")["overflow"]
            assert overflow["pending_dropped"] == 4 * (calls - MAX_PENDING)
            assert sum(recorded()) + overflow["pending_dropped"] == 4 * calls


def test_a_wake_pair_whose_write_end_went_away_does_not_spin_the_agent_thread() -> None:
    """An ended wake-up socket stays readable for ever: the agent makes a new pair instead of waking on it
    in a loop (which took half a core of the app), and keeps serving. Oracle: the process's own CPU time
    over 2 s of idling, from /proc (psutil), against what an idle agent costs (well under 10% of a core)."""
    import psutil

    with short_tmp_dir() as tmp, Target(os.path.join(tmp, "socks"), script=LC_TARGET) as target:
        assert answers(target.socket)
        assert target.cmd("closewake") == "closed"
        proc = psutil.Process(target.proc.pid)
        assert target.cmd("work 1") == "done 1"  # the first metric wakes the agent thread through the pair
        before = proc.cpu_times()
        threading.Event().wait(2.0)
        after = proc.cpu_times()
        used = (after.user - before.user) + (after.system - before.system)
        assert used < 0.2, f"the app used {used:.2f} s of CPU in 2 s of idling"
        assert answers(target.socket)
