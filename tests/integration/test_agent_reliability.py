"""The agent under bad or careless viewers: the app runs on, other viewers keep working, nothing leaks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from perftop.collectors.agent_client import AgentClient
from perftop.wire.protocol import MAX_FRAME_BYTES, encode
from perftop.wire.sketch import Sketch
from tests.helpers import short_tmp_dir, wait_for
from tests.targets.agent_harness import ROOT, RawViewer, Target, fd_count, target_env, thread_names

SPAM_VIEWER = Path(__file__).resolve().parents[1] / "targets" / "agent_spam_viewer.py"


@pytest.fixture
def target() -> Iterator[Target]:
    with short_tmp_dir() as tmp, Target(os.path.join(tmp, "socks")) as t:
        yield t


def assert_still_serving(target: Target) -> None:
    assert target.alive()
    assert target.cmd("work 10") == "done 10"
    with AgentClient(target.socket) as client:
        assert client.call("info")["pid"] == target.pid


def closed_with_error(viewer: RawViewer, contains: str) -> None:
    """The agent sent one error frame saying `contains`, then closed the connection."""
    messages = viewer.read_all()
    assert messages, "the agent closed without an error frame"
    assert messages[-1]["type"] == "error", messages
    assert contains in messages[-1]["message"], messages[-1]


@pytest.mark.parametrize(
    ("payload", "contains"),
    [
        (struct.pack("!I", 9) + b"not json!", "not UTF-8 JSON"),
        (struct.pack("!I", 2) + b"\xff\xfe", "not UTF-8 JSON"),
        (struct.pack("!I", 7) + b"[1,2,3]", "JSON object"),
        (struct.pack("!I", 3) + b"NaN", "NaN"),
        (struct.pack("!I", MAX_FRAME_BYTES + 1), "exceeds"),
        (struct.pack("!I", 0xFFFFFFFF) + b"x" * 100, "exceeds"),
    ],
    ids=["garbage", "not-utf8", "not-an-object", "nan", "oversized", "huge-length"],
)
def test_bad_frames_close_only_that_connection(target: Target, payload: bytes, contains: str) -> None:
    with AgentClient(target.socket) as bystander, RawViewer(target.socket) as bad:
        bad.hello()
        bad.send_raw(payload)
        closed_with_error(bad, contains)
        assert bystander.call("info")["pid"] == target.pid
    assert_still_serving(target)


def test_wrong_protocol_version_is_refused_clearly(target: Target) -> None:
    with RawViewer(target.socket) as viewer:
        assert viewer.read()["type"] == "hello"  # type: ignore[index]
        viewer.send({"type": "hello", "role": "viewer", "pid": os.getpid(), "protocol": 99})
        closed_with_error(viewer, "protocol version 99 is not supported")
    assert_still_serving(target)


def test_request_before_hello_is_refused(target: Target) -> None:
    with RawViewer(target.socket) as viewer:
        viewer.read()
        viewer.send({"type": "request", "id": 1, "method": "stats", "params": {}})
        closed_with_error(viewer, "expected the viewer's hello")
    assert_still_serving(target)


def test_malformed_request_is_refused(target: Target) -> None:
    with RawViewer(target.socket) as viewer:
        viewer.hello()
        viewer.send({"type": "request", "id": "one", "method": "stats"})
        closed_with_error(viewer, "'id' must be int")
    assert_still_serving(target)


def test_truncated_frame_then_hang_up(target: Target) -> None:
    with RawViewer(target.socket) as viewer:
        viewer.hello()
        frame = encode({"type": "request", "id": 1, "method": "stats", "params": {}})
        viewer.send_raw(frame[: len(frame) // 2])
        viewer.sock.shutdown(socket.SHUT_WR)
        assert viewer.read_all() == []
    assert_still_serving(target)


def test_pipelined_requests_are_all_answered_in_order(target: Target) -> None:
    target.cmd("work 5")
    with RawViewer(target.socket) as viewer:
        viewer.hello()
        viewer.send_raw(
            b"".join(encode({"type": "request", "id": i, "method": "info", "params": {}}) for i in range(500))
        )
        ids = [viewer.read()["id"] for _ in range(500)]  # type: ignore[index]
    assert ids == list(range(500))


def test_viewer_killed_mid_stream(target: Target) -> None:
    spam = subprocess.Popen(
        [sys.executable, str(SPAM_VIEWER), target.socket],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
        env=target_env(),
    )
    try:
        assert spam.stdout is not None
        assert spam.stdout.readline().strip() == "streaming"
        spam.send_signal(signal.SIGKILL)
        spam.wait(timeout=10)
    finally:
        if spam.poll() is None:
            spam.kill()
            spam.wait(timeout=10)
        if spam.stdout is not None:
            spam.stdout.close()
    assert_still_serving(target)


def test_50_viewers_leak_no_fd_nor_thread(target: Target) -> None:
    target.cmd("work 10")
    wait_for(lambda: "perftop-agent" in thread_names(target.pid))  # named by itself once running
    fds_before = fd_count(target.pid)
    threads_before = sorted(thread_names(target.pid))
    for _ in range(50):
        with AgentClient(target.socket) as client:
            assert Sketch.from_dict(client.call("stats")["timings"]["work"]["sketch"]).count == 10
    clients = [AgentClient(target.socket) for _ in range(50)]
    try:
        assert fd_count(target.pid) >= fds_before + 50
        for client in clients:
            assert client.call("info")["pid"] == target.pid
    finally:
        for client in clients:
            client.close()
    # Some viewers hang up without a word, mid-handshake.
    for _ in range(20):
        with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as s:
            s.connect(target.socket)
    wait_for(lambda: fd_count(target.pid) == fds_before, timeout=10)
    assert sorted(thread_names(target.pid)) == threads_before
    assert_still_serving(target)


def test_a_viewer_that_stops_reading_never_blocks_the_app(target: Target) -> None:
    target.cmd("work 10")
    assert target.cmd("spin 2") == "spinning 2"

    def progress() -> int:
        return int(target.cmd("progress").split()[1])

    stuck = RawViewer(target.socket)
    stuck.hello()
    request = encode({"type": "request", "id": 1, "method": "info", "params": {}})
    sent = 0
    # Phase 1: fill the socket buffers but stay under the agent's limit; the viewer reads nothing.
    stuck.send_raw(request * 2000)
    sent += 2000
    before = progress()
    wait_for(lambda: progress() > before + 10_000, timeout=20)
    with AgentClient(target.socket) as other:
        assert other.call("info")["pid"] == target.pid
    # Phase 2: keep asking without reading; the agent drops the viewer instead of buffering forever.
    closed = threading.Event()

    def flood() -> None:
        try:
            for _ in range(200):
                stuck.send_raw(request * 500)
        except OSError:
            closed.set()

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    flooder.join(60)
    assert closed.is_set(), "the agent kept a viewer that does not read"
    stuck.close()
    with AgentClient(target.socket) as other:
        stats = other.call("stats")
    assert stats["overflow"]["viewers_closed_slow"] == 1
    after = progress()
    wait_for(lambda: progress() > after + 10_000, timeout=20)
    assert_still_serving(target)
