"""perftop.wsgi.Middleware under wsgiref and perftop.asgi.Middleware under uvicorn, on loopback: requests
are timed per route template (never per raw URL), counted per status class, 5xx and exceptions as errors."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perftop.collectors.discovery import find_agent
from tests.helpers import perftop_json

REPO = Path(__file__).resolve().parent.parent.parent
TARGETS = REPO / "tests" / "targets"


class Server:
    """A target app serving on 127.0.0.1 in a subprocess, with its agent's sockets in `sock_dir`."""

    def __init__(self, script: str, sock_dir: str) -> None:
        self.sock_dir = sock_dir
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, str(TARGETS / script), self.sock_dir],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def start(self) -> Server:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip().isdigit(), f"no port from the server: {line!r} {self.stderr()}"
        self.base = f"http://127.0.0.1:{int(line)}"
        return self

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def request(self, path: str, method: str = "GET") -> int:
        req = urllib.request.Request(self.base + path, method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                resp.read()
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            exc.read()
            return int(exc.code)

    def target_args(self) -> list[str]:
        return ["--pid", str(self.proc.pid), "--socket-dir", self.sock_dir]

    def snapshot(self) -> dict[str, Any]:
        snapshot = ("snapshot", "--json", "--interval", "0.1", *self.target_args())
        snap: dict[str, Any] = perftop_json(*snapshot, env=dict(os.environ), timeout=60, cwd=REPO)
        return snap

    def settled(self, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        """The first snapshot for which `predicate(snapshot)` holds (the agent aggregates every 0.2 s)."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.snapshot()
            if predicate(snap):
                return snap
            assert time.monotonic() < deadline, f"never settled: {sorted(snap['timings'])}"
            time.sleep(0.1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


@pytest.fixture
def wsgi(sock_dir: str) -> Iterator[Server]:
    server = Server("mw_wsgi_app.py", sock_dir)
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def asgi(sock_dir: str) -> Iterator[Server]:
    if importlib.util.find_spec("uvicorn") is None:
        pytest.skip("uvicorn is not installed (pip install '.[test]')")
    server = Server("mw_asgi_app.py", sock_dir)
    try:
        yield server.start()
    finally:
        server.close()


def http_timings(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in snap["timings"].items() if name.startswith("http ")}


def counter(snap: dict[str, Any], name: str) -> float:
    return float(snap["counters"].get(name, {}).get("value", 0))


def test_wsgi_routes_by_template(wsgi: Server) -> None:
    assert find_agent(wsgi.proc.pid, wsgi.sock_dir) is not None
    requests = [
        ("/orders/1", 200),
        ("/orders/2", 200),
        ("/orders/3", 200),
        ("/orders/7/items/9", 200),
        ("/items/41", 200),
        ("/items/42", 200),
        ("/shops/acme/orders/5", 200),
        ("/shops/zeta/orders/6", 200),
        ("/reports/q1", 200),
        ("/reports/q2", 200),
        ("/nope/1", 404),
        ("/nope/abc", 404),
        ("/boom", 500),
        ("/busy", 503),
    ]
    for path, status in requests:
        assert wsgi.request(path) == status, path
    assert wsgi.request("/orders", method="POST") == 201
    total = len(requests) + 1

    def done(snap: dict[str, Any]) -> bool:
        return sum(int(t["count"]) for t in http_timings(snap).values()) == total

    snap = wsgi.settled(done)
    timings = http_timings(snap)
    assert {name: t["count"] for name, t in timings.items()} == {
        "http GET /orders/{id}": 3,
        "http GET /orders/{id}/items/{id}": 1,
        "http GET /items/{item_id}": 2,
        "http GET /shops/{shop}/orders/{order}": 2,
        "http GET /reports/{name}": 2,
        "http GET {not_found}": 2,
        "http GET /boom": 1,
        "http GET /busy": 1,
        "http POST /orders": 1,
    }
    assert timings["http GET /boom"]["errors"] == 1
    assert timings["http GET /busy"]["errors"] == 1
    assert timings["http GET /orders/{id}"]["errors"] == 0
    assert timings["http GET {not_found}"]["errors"] == 0
    assert counter(snap, "http 2xx") == 11
    assert counter(snap, "http 4xx") == 2
    assert counter(snap, "http 5xx") == 2
    assert all(t["max_ms"] > 0 for t in timings.values())


def test_asgi_routes_by_template_under_uvicorn(asgi: Server) -> None:
    requests = [
        ("/orders/10", 200),
        ("/orders/11", 200),
        ("/api/users/5", 200),
        ("/api/users/6", 200),
        ("/api/users/7", 200),
        ("/plain/123", 200),
        ("/plain/550e8400-e29b-41d4-a716-446655440000", 200),
        ("/stream", 200),
        ("/elsewhere", 404),
        ("/boom", 500),
        ("/busy", 503),
    ]
    for path, status in requests:
        assert asgi.request(path) == status, path

    def done(snap: dict[str, Any]) -> bool:
        return sum(int(t["count"]) for t in http_timings(snap).values()) == len(requests)

    snap = asgi.settled(done)
    timings = http_timings(snap)
    assert {name: t["count"] for name, t in timings.items()} == {
        "http GET /orders/{order_id}": 2,
        "http GET /api/users/{user_id}": 3,
        "http GET /plain/{id}": 2,
        "http GET /stream": 1,
        "http GET {not_found}": 1,
        "http GET /boom": 1,
        "http GET /busy": 1,
    }
    assert timings["http GET /boom"]["errors"] == 1
    assert timings["http GET /busy"]["errors"] == 1
    assert timings["http GET /api/users/{user_id}"]["errors"] == 0
    assert counter(snap, "http 2xx") == 8
    assert counter(snap, "http 4xx") == 1
    assert counter(snap, "http 5xx") == 2
