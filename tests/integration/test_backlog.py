"""The accept backlog of a process's listening TCP sockets: connections the kernel took that the app has
not accepted yet. Oracles: the number of connections the test opened and the backlog it asked listen()
for; and, end to end, clients waiting on a real gunicorn whose only worker is busy."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from perftop.collectors.process import ProcessCollector, listen_backlog
from tests.helpers import free_port, run_perftop, wait_for
from tests.integration.test_frameworks import CONTROL

REPO = Path(__file__).resolve().parent.parent.parent

HOLDER = """
import socket, sys, time
family = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
s = socket.socket(family)
s.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("family", ["4", "6"])
def test_the_queue_of_a_socket_that_never_accepts(family: str) -> None:
    if family == "6" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, family], stdout=subprocess.PIPE, text=True)
    clients: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        host = "::1" if family == "6" else "127.0.0.1"
        address = f"[{host}]:{port}" if family == "6" else f"{host}:{port}"
        collector = ProcessCollector(proc.pid)
        assert [b.to_json() for b in collector.sample().listen_backlog] == [
            {"address": address, "queued": 0, "max": 16}
        ]
        for _ in range(5):
            clients.append(socket.create_connection((host, port), timeout=5))
        assert [(b.address, b.queued, b.max) for b in listen_backlog(proc.pid)] == [(address, 5, 16)]
        # The collector re-reads a listening process's queue on every sample, not only with connections.
        assert [(b.queued, b.max) for b in collector.sample().listen_backlog] == [(5, 16)]
    finally:
        for c in clients:
            c.close()
        proc.kill()
        proc.wait(10)


def test_a_busy_gunicorn_shows_the_requests_waiting_in_its_backlog(tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")
    pytest.importorskip("flask")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PERFTOP_SOCKET_DIR"] = str(tmp_path / "sockets")
    cmd = ["gunicorn", "-w", "1", "-b", f"127.0.0.1:{port}", "--backlog", "64", *CONTROL]
    server = subprocess.Popen(
        [sys.executable, "-m", "perftop", "run", "--", *cmd, "tests.targets.web.flask_app:app"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/user/ready", timeout=5):
                    return True
            except OSError:
                return False

        wait_for(answers, 60, "gunicorn to answer", interval=0.1)
        waiting = 6
        slow = f"http://127.0.0.1:{port}/sleep/1500"
        threads = [
            threading.Thread(target=lambda: urllib.request.urlopen(slow, timeout=60).read())
            for _ in range(waiting)
        ]
        for t in threads:
            t.start()
        time.sleep(0.5)  # the one sync worker holds one request; the others wait in the kernel's queue
        out = run_perftop("snapshot", "--pid", str(server.pid), "--json", env=env, timeout=60, cwd=REPO)
        assert out.returncode == 0, out.stderr
        backlog = json.loads(out.stdout)["process"]["listen_backlog"]
        assert len(backlog) == 1 and backlog[0]["address"] == f"127.0.0.1:{port}", backlog
        assert backlog[0]["max"] == 64
        # One request is being served (the worker took it), at most one more may be accepted but not read.
        assert waiting - 2 <= backlog[0]["queued"] <= waiting - 1, backlog
        for t in threads:
            t.join(30)
    finally:
        os.killpg(server.pid, 15)
        server.wait(15)
