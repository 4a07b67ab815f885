"""Slow and idle viewers cannot hold the agent's slots: they time out, and the user's own viewer gets in."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from perftop.agent import server
from perftop.collectors.agent_client import AgentClient, AgentError
from perftop.wire.protocol import Hello, Request, encode
from tests.helpers import short_tmp_dir, wait_for
from tests.targets.agent_harness import RawViewer, Target

LC_TARGET = Path(__file__).resolve().parents[1] / "targets" / "lc_target.py"


@pytest.fixture
def target() -> Iterator[Target]:
    with short_tmp_dir() as tmp, Target(os.path.join(tmp, "socks"), script=LC_TARGET) as t:
        yield t


def last_error(viewer: RawViewer) -> str:
    """The message of the error frame the agent sent before closing (after any other messages)."""
    messages = viewer.read_all()
    assert messages and messages[-1]["type"] == "error", messages
    return str(messages[-1]["message"])


def test_a_one_byte_per_second_sender_is_closed(target: Target) -> None:
    frame = encode(Request(1, "info", {}).to_dict())
    with RawViewer(target.socket, timeout=60) as slow, AgentClient(target.socket) as bystander:
        slow.hello()
        started = time.monotonic()
        closed_at = None
        for byte in frame[:-1]:
            try:
                slow.send_raw(bytes([byte]))
            except OSError:  # closed by the agent
                closed_at = time.monotonic()
                break
            assert bystander.call("info")["pid"] == target.pid
            time.sleep(1.0)
        assert closed_at is not None, "the slow sender was never closed"
        assert "took more than" in last_error(slow)
        elapsed = closed_at - started
        # Dropped after FRAME_TIMEOUT_S, not before; the bound above it is generous (loaded machine).
        assert server.FRAME_TIMEOUT_S - 1 <= elapsed <= server.FRAME_TIMEOUT_S + 30
        assert bystander.call("stats")["overflow"]["viewers_closed_frame_timeout"] == 1


def test_idle_viewers_holding_every_slot_make_room_for_the_users_viewer(target: Target) -> None:
    held: list[RawViewer] = []
    extra: list[socket.socket] = []
    opened = time.monotonic()  # no viewer can have been idle for IDLE_EVICT_S before opened + that
    try:
        for _ in range(server.MAX_CONNECTIONS):
            viewer = RawViewer(target.socket, timeout=30)
            viewer.hello()
            held.append(viewer)
        for _ in range(8):  # more than every slot: these are refused or wait in the backlog
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(target.socket)
            extra.append(sock)

        def user_viewer_answers() -> bool:
            try:
                with AgentClient(target.socket, timeout=10) as client:
                    return bool(client.call("info")["pid"] == target.pid)
            except AgentError:
                return False

        assert wait_for(user_viewer_answers, timeout=server.IDLE_EVICT_S + 30)
        assert time.monotonic() - opened >= server.IDLE_EVICT_S  # none was evicted before it was idle
        # Whoever made room was told why.
        readable, _, _ = select.select([v.sock for v in held], [], [], 5.0)
        evicted = 0
        for viewer in held:
            if viewer.sock in readable:
                messages = viewer.read_all()
                evicted += bool(messages and "idle" in str(messages[-1].get("message")))
        assert evicted >= 1
        assert target.cmd("work 10") == "done 10"
    finally:
        for viewer in held:
            viewer.close()
        for sock in extra:
            sock.close()


def test_an_idle_viewer_times_out_and_a_polling_one_does_not(target: Target) -> None:
    assert target.cmd("set IDLE_TIMEOUT_S 2") == "set"
    with RawViewer(target.socket, timeout=30) as idle, AgentClient(target.socket) as polling:
        idle.hello()
        started = time.monotonic()
        while time.monotonic() - started < 6:
            assert polling.call("info")["pid"] == target.pid
            time.sleep(0.5)
        assert "idle for 2 s" in last_error(idle)
        assert polling.call("stats")["overflow"]["viewers_closed_idle"] == 1


def test_a_viewer_that_stops_reading_is_closed_after_the_write_timeout(target: Target) -> None:
    assert target.cmd("set WRITE_TIMEOUT_S 2") == "set"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(target.socket)
    with contextlib.closing(sock), AgentClient(target.socket) as watcher:
        assert sock.recv(65536)  # the agent's hello
        sock.sendall(encode(Hello(role="viewer", pid=os.getpid()).to_dict()))
        # Far more answers than the socket buffers hold, far less than the output limit: queued, stuck.
        sock.sendall(b"".join(encode(Request(i, "info", {}).to_dict()) for i in range(1, 3000)))

        def closed_slow() -> bool:
            return bool(watcher.call("stats")["overflow"]["viewers_closed_slow"] == 1)

        wait_for(closed_slow, timeout=30)


def test_a_client_closed_as_idle_reconnects_on_its_next_request(target: Target) -> None:
    assert target.cmd("set IDLE_TIMEOUT_S 1") == "set"
    with AgentClient(target.socket) as client:
        assert client.call("info")["pid"] == target.pid
        first = client._sock
        with AgentClient(target.socket) as watcher:
            wait_for(lambda: watcher.call("stats")["overflow"]["viewers_closed_idle"] >= 1, timeout=30)
        assert client.call("info")["pid"] == target.pid
        assert client._sock is not first
