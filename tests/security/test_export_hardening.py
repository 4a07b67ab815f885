"""Issue 10 item 10 and issue 11 item 5: `perftop export` under hostile or careless clients, and its first
scrape. A real exporter process, real TCP clients, real agents (one of them the test's own
protocol-speaking peer, which counts the stats requests the exporter really sends it)."""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families as parse_text

from perftop.wire.protocol import PROTOCOL_VERSION, FrameDecoder, Hello, Response, encode
from tests.foreign_user import dropper, foreign_env, interpreter_for
from tests.helpers import wait_for
from tests.targets.agent_harness import ROOT, target_env
from tests.targets.exp_procs import Command, http_get, run


def exporter(stack: ExitStack, sock_dir: str, *args: str) -> tuple[str, Command]:
    cmd = stack.enter_context(Command("export", "--listen", "127.0.0.1:0", "--socket-dir", sock_dir, *args))
    port = cmd.wait_line(r"exporting on http://[^:]+:(\d+)/metrics").group(1)
    return f"http://127.0.0.1:{port}", cmd


class CountingAgent:
    """An agent socket served by this test (named after the test's own PID, so the exporter finds it):
    it says hello, answers every `stats` request with empty stats, and counts them."""

    def __init__(self, directory: str) -> None:
        self.requests = 0
        self.path = os.path.join(directory, f"{os.getpid()}.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(16)
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        hello = Hello(role="agent", pid=os.getpid(), protocol=PROTOCOL_VERSION, name="counted")
        decoder = FrameDecoder()
        with contextlib.suppress(OSError), conn:
            conn.sendall(encode(hello.to_dict()))
            while data := conn.recv(65536):
                for message in decoder.feed(data):
                    if message.get("type") != "request":
                        continue
                    with self._lock:
                        self.requests += message.get("method") == "stats"
                    result = {"timings": {}, "counters": {}, "gauges": {}}
                    conn.sendall(encode(Response(message["id"], True, result).to_dict()))

    def close(self) -> None:
        self.server.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """`perftop ARGS` as user nobody (root may bind any port; the privileged-port case needs a user)."""
    nobody = pwd.getpwnam("nobody")
    python = interpreter_for(nobody.pw_uid, nobody.pw_gid)
    if python is None:
        pytest.skip("no Python that user nobody can run with psutil and perftop")
    return subprocess.run(
        [python, "-m", "perftop", *args],
        preexec_fn=dropper(nobody.pw_uid, nobody.pw_gid),
        env=foreign_env(),
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        check=False,
    )


@pytest.mark.parametrize(
    "listen",
    ["in-use", "192.0.2.1:0", "127.0.0.1:80"],
    ids=["port-in-use", "unassigned-address", "privileged-port"],
)
def test_a_bind_failure_is_one_line_and_a_nonzero_exit(sock_dir: str, listen: str) -> None:
    with socket.socket() as taken:
        if listen == "in-use":
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            listen = f"127.0.0.1:{taken.getsockname()[1]}"
        if listen.endswith(":80") and os.geteuid() == 0:
            result = as_nobody("export", "--listen", listen, "--socket-dir", sock_dir)
        else:
            result = run("export", "--listen", listen, "--socket-dir", sock_dir, timeout=60)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"perftop: cannot listen on {listen}: "), result.stderr
    assert "Traceback" not in result.stderr


def test_half_open_connections_do_not_make_threads_and_scrapes_still_work(
    stack: ExitStack, sock_dir: str
) -> None:
    url, cmd = exporter(stack, sock_dir)
    port = int(url.rsplit(":", 1)[1])
    exporter_proc = psutil.Process(cmd.proc.pid)
    assert http_get(f"{url}/healthz")[0] == 200
    baseline = exporter_proc.num_threads()
    silent, partial = [], []
    for _ in range(250):  # connect and say nothing
        s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
        silent.append(s)
    for _ in range(100):  # a request that never ends
        s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        partial.append(s)
    time.sleep(1.0)
    threads = exporter_proc.num_threads()
    assert threads <= baseline + 10, f"{threads} threads for 350 half-open connections ({baseline} before)"

    # A scraper still gets its answer while they are open (at worst after the stalled ones time out).
    status, _, body = http_get(f"{url}/metrics", timeout=60)
    assert status == 200 and "perftop_system_cpu_percent" in body

    # The exporter closes what stays silent: it does not keep 350 descriptors forever.
    def closed_by_server() -> bool:
        silent[0].settimeout(0.2)
        try:
            return silent[0].recv(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    wait_for(closed_by_server, timeout=30, interval=0.5)
    wait_for(lambda: exporter_proc.num_fds() < 100, timeout=30, interval=0.5)
    assert exporter_proc.num_threads() <= baseline + 10
    assert "Traceback" not in cmd.stderr


def test_client_resets_cost_no_traceback(stack: ExitStack, sock_dir: str) -> None:
    url, cmd = exporter(stack, sock_dir)
    port = int(url.rsplit(":", 1)[1])
    before = len(cmd.lines)
    for i in range(40):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        if i % 2:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        # SO_LINGER 0: close() sends an RST, as a client that crashed or timed out does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    assert http_get(f"{url}/metrics", timeout=60)[0] == 200
    time.sleep(1.0)
    new = cmd.lines[before:]
    assert len(new) <= 1, "".join(new)
    assert "Traceback" not in cmd.stderr


def test_no_cache_cannot_make_the_exporter_hammer_the_agents(stack: ExitStack, sock_dir: str) -> None:
    agent = CountingAgent(sock_dir)
    stack.callback(agent.close)
    url, cmd = exporter(stack, sock_dir)
    wait_for(lambda: 'app="counted"' in http_get(f"{url}/metrics", fresh=True)[2], timeout=20)
    start_count = agent.requests
    started = time.monotonic()
    answered: list[int] = []

    def hammer(fresh: bool) -> None:
        while time.monotonic() - started < 5.0:
            answered.append(http_get(f"{url}/metrics", fresh=fresh, timeout=30)[0])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(hammer, [True] * 6 + [False] * 2))
    elapsed = time.monotonic() - started
    calls = agent.requests - start_count
    assert set(answered) == {200} and len(answered) >= 8
    # At most one collection a second for requests, and two a second made ahead of paced scrapes.
    assert calls <= 3 * elapsed + 3, f"{calls} stats requests for {len(answered)} scrapes in {elapsed:.1f} s"
    # Still fresh: what an agent has now is in the next no-cache answer (here: the agent is gone).
    agent.close()
    body = http_get(f"{url}/metrics", fresh=True, timeout=30)[2]
    assert 'app="counted"' not in body
    assert "Traceback" not in cmd.stderr


BUSY = textwrap.dedent(
    """
    import sys, time
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    while True:
        pass
    """
)


def test_the_first_scrape_reports_a_busy_process_cpu(stack: ExitStack, sock_dir: str) -> None:
    busy = subprocess.Popen(
        [sys.executable, "-c", BUSY], stdout=subprocess.PIPE, cwd=str(ROOT), env=target_env()
    )
    stack.callback(busy.wait, 10)
    stack.callback(busy.kill)
    assert busy.stdout is not None and busy.stdout.readline() == b"ready\n"
    url, _ = exporter(stack, sock_dir, "--pid", str(busy.pid))
    proc = psutil.Process(busy.pid)
    # Oracle: the process's CPU time from psutil over an interval that holds the exporter's first scrape.
    cpu0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
    with urllib.request.urlopen(f"{url}/metrics", timeout=60) as response:
        body = response.read().decode()
    cpu1, t1 = sum(proc.cpu_times()[:2]), time.monotonic()
    oracle = 100 * (cpu1 - cpu0) / (t1 - t0)
    exported = [
        s.value
        for fam in parse_text(body)
        for s in fam.samples
        if s.name == "perftop_process_cpu_percent" and s.labels["pid"] == str(busy.pid)
    ]
    assert len(exported) == 1, body
    if oracle < 10:
        pytest.skip(f"the busy process got only {oracle:.1f}% CPU: the machine is too loaded to tell")
    # The exporter measures over most of the oracle's interval (0.5 s of about 0.6 s), with the 10 ms
    # resolution of CPU times: a few points apart at most; the 0.0 of an unprimed first sample is not.
    assert abs(exported[0] - oracle) <= max(4.0, 0.4 * oracle), (exported[0], oracle)
