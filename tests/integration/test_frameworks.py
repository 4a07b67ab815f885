"""Zero-code request timing: real Flask, Django, FastAPI and Bottle apps, which know nothing of perftop,
served by real gunicorn (sync, gthread, UvicornWorker), uvicorn, hypercorn, waitress, `flask run` and
Django's runserver under `perftop run`, with requests over 127.0.0.1.

The oracle is the test's own client: every request it sent is counted once under its route template
(exact counts, errors by status), no raw path ever names a metric, and no request is timed longer by the
app than the client waited for it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port, run_perftop, wait_for

REPO = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
RAW = ("alice", "bob", "carol", "6a2f41a3", "1999", "/user/a", "/orders/1", "nope")

pytest.importorskip("flask")
pytest.importorskip("django")
pytest.importorskip("fastapi")
pytest.importorskip("gunicorn")


class Service:
    """`perftop run -- CMD` on a free loopback port, its agents' sockets in a private directory."""

    def __init__(
        self, cmd: list[str], port: int, env: dict[str, str] | None = None, options: tuple[str, ...] = ()
    ) -> None:
        self.port = port
        self.tmp = tempfile.TemporaryDirectory(prefix="ptfw")
        self.log = open(os.path.join(self.tmp.name, "server.log"), "w+")  # noqa: SIM115 - closed in stop()
        base = {
            k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PERFTOP", "PERFTOP_FRAMEWORKS")
        }
        self.env = {
            **base,
            "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '/usr/bin:/bin')}",
            "PERFTOP_SOCKET_DIR": os.path.join(self.tmp.name, "sockets"),
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "perftop", "run", *options, "--", *cmd],
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.client_ms: dict[str, list[float]] = {}

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def wait_ready(self, probe: str = "/user/probe-ready", timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the server exited: {self.output()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=5).close()
            except OSError:
                time.sleep(0.1)
                continue
            self.get(probe)  # the first request, timed by the client like the others
            return
        raise AssertionError(f"the server did not answer on port {self.port}: {self.output()}")

    def get(self, path: str, headers: dict[str, str] | None = None) -> int:
        """GET over a connection of its own, read until the server closes it: the client's time then spans
        the whole of the server's (accept to close, which comes after the app's body is closed)."""
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", self.port), timeout=30) as conn:
            conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        self.client_ms.setdefault(path, []).append((time.perf_counter() - t0) * 1000)
        status_line = data.split(b"\r\n", 1)[0].split()
        assert len(status_line) >= 2 and status_line[0].startswith(b"HTTP/"), data[:200]
        return int(status_line[1])

    def snapshot(self) -> dict[str, Any]:
        """`perftop snapshot --pid SERVER --json`: the server and its workers merged."""
        out = run_perftop(
            "snapshot", "--pid", str(self.proc.pid), "--json", env=self.env, timeout=60, cwd=REPO
        )
        assert out.returncode == 0, out.stderr + self.output()
        snap: dict[str, Any] = json.loads(out.stdout)
        return snap

    def timings(self, prefix: str = "http ") -> dict[str, dict[str, Any]]:
        """The merged timings of the server and its workers named `prefix...`."""
        timings: dict[str, dict[str, Any]] = self.snapshot()["timings"]
        return {name: t for name, t in timings.items() if name.startswith(prefix)}

    def wait_counts(self, expected: dict[str, int], timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            timings = self.timings()
            got = {name: t["count"] for name, t in timings.items()}
            if got == expected or time.monotonic() > deadline:
                assert got == expected, f"counts by route: {got}, sent: {expected}\n{self.output()}"
                return timings
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)
        self.log.close()
        self.tmp.cleanup()


@pytest.fixture
def serve() -> Iterator[Any]:
    services: list[Service] = []

    def start(
        cmd: list[str],
        port: int,
        env: dict[str, str] | None = None,
        probe: str = "/user/x",
        options: tuple[str, ...] = (),
    ) -> Service:
        service = Service(cmd, port, env, options)
        services.append(service)
        service.wait_ready(probe)
        return service

    yield start
    for service in services:
        service.stop()


# What each app is asked, and the metric each request must land in: (path, expected status, metric).
FLASK = [
    *[(f"/user/{n}", 200, "http GET /user/{username}") for n in ("alice", "bob", "carol", "alice")],
    *[(f"/orders/{i}", 200, "http GET /orders/{order_id}") for i in (1, 2, 1999)],
    ("/api/items/6a2f41a3-c54c-fce8-32d2-0324e1c32e22", 200, "http GET /api/items/{item_id}"),
    ("/boom", 500, "http GET /boom"),
    ("/missing/nope", 404, "http GET /missing/{thing}"),
    *[(f"/nope/{n}", 404, "http GET {not_found}") for n in ("a", "b")],
]
DJANGO = [
    *[(f"/user/{n}/", 200, "http GET /user/{username}/") for n in ("alice", "bob", "carol")],
    *[(f"/api/orders/{i}/", 200, "http GET /api/orders/{order_id}/") for i in (1, 1999)],
    ("/articles/1999/", 200, "http GET /articles/{year}/"),
    ("/boom/", 500, "http GET /boom/"),
    ("/missing/nope/", 404, "http GET /missing/{thing}/"),
    *[(f"/nope/{n}", 404, "http GET {not_found}") for n in ("a", "b")],
]
FASTAPI = [
    *[(f"/user/{n}", 200, "http GET /user/{username}") for n in ("alice", "bob", "carol")],
    *[(f"/orders/{i}", 200, "http GET /orders/{order_id}") for i in (1, 2, 1999)],
    ("/boom", 500, "http GET /boom"),
    ("/missing/nope", 404, "http GET /missing/{thing}"),
    *[(f"/nope/{n}", 404, "http GET {not_found}") for n in ("a", "b")],
]
PYRAMID = [
    *[(f"/user/{n}", 200, "http GET /user/{username}") for n in ("alice", "bob")],
    ("/boom", 500, "http GET /boom"),
    ("/nope/a", 404, "http GET {not_found}"),
]
FALCON = [
    *[(f"/user/{n}", 200, "http GET /user/{username}") for n in ("alice", "bob")],
    *[(f"/orders/{i}", 200, "http GET /orders/{order_id:int}") for i in (1, 1999)],
    ("/nope/a", 404, "http GET {not_found}"),
]
BOTTLE = [
    *[(f"/user/{n}", 200, "http GET /user/{username}") for n in ("alice", "bob")],
    *[(f"/orders/{i}", 200, "http GET /orders/{order_id}") for i in (1, 1999)],
    ("/boom", 500, "http GET /boom"),
]


def _control_option() -> tuple[str, ...]:
    """gunicorn 24+ opens a control socket at one fixed path per user: parallel servers would share it."""
    try:
        out = subprocess.run(
            ["gunicorn", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        )
    except OSError:
        return ()
    return ("--no-control-socket",) if "--no-control-socket" in out.stdout else ()


CONTROL = _control_option()


def gunicorn(app: str, port: int, *extra: str) -> list[str]:
    return [
        "gunicorn",
        "-w",
        "2",
        "-b",
        f"127.0.0.1:{port}",
        "--graceful-timeout",
        "2",
        *CONTROL,
        *extra,
        app,
    ]


def server_cmd(server: str, port: int) -> tuple[list[str], list[tuple[str, int, str]]]:
    flask_app, django_app = "tests.targets.web.flask_app", "tests.targets.web.django_app"
    fastapi_app, bottle_app = "tests.targets.web.fastapi_app:app", "tests.targets.web.bottle_app:app"
    uvicorn = ["uvicorn", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    commands = {
        "flask/gunicorn-sync": (gunicorn(f"{flask_app}:app", port), FLASK),
        "flask/gunicorn-gthread": (
            gunicorn(f"{flask_app}:app", port, "-k", "gthread", "--threads", "4"),
            FLASK,
        ),
        "flask/flask-run": (["flask", "--app", flask_app, "run", "--port", str(port)], FLASK),
        # `python -m flask`: runpy looks the package up before it imports it
        "flask/python-m-flask": (
            ["python", "-m", "flask", "--app", flask_app, "run", "--port", str(port)],
            FLASK,
        ),
        "flask/waitress": (["waitress-serve", f"--listen=127.0.0.1:{port}", f"{flask_app}:app"], FLASK),
        "django/gunicorn-sync": (gunicorn(f"{django_app}:application", port), DJANGO),
        "django/runserver": (
            ["python", "tests/targets/web/django_app.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
            DJANGO,
        ),
        "django/uvicorn-asgi": ([*uvicorn, f"{django_app}:asgi_application"], DJANGO),
        "fastapi/uvicorn": ([*uvicorn, fastapi_app], FASTAPI),
        "fastapi/gunicorn-uvicornworker": (
            gunicorn(fastapi_app, port, "-k", "uvicorn.workers.UvicornWorker"),
            FASTAPI,
        ),
        "fastapi/hypercorn": (["hypercorn", "-b", f"127.0.0.1:{port}", fastapi_app], FASTAPI),
        "bottle/gunicorn-sync": (gunicorn(bottle_app, port), BOTTLE),
        "pyramid/gunicorn-sync": (gunicorn("tests.targets.web.pyramid_app:app", port), PYRAMID),
        "falcon/gunicorn-sync": (gunicorn("tests.targets.web.falcon_app:app", port), FALCON),
    }
    return commands[server]


SERVERS = [
    "flask/gunicorn-sync",
    "flask/gunicorn-gthread",
    "flask/flask-run",
    "flask/waitress",
    "flask/python-m-flask",
    "django/gunicorn-sync",
    "django/runserver",
    "django/uvicorn-asgi",
    "fastapi/uvicorn",
    "fastapi/gunicorn-uvicornworker",
    "fastapi/hypercorn",
    "bottle/gunicorn-sync",
    "pyramid/gunicorn-sync",
    "falcon/gunicorn-sync",
]


@pytest.mark.parametrize("server", SERVERS)
def test_every_request_is_timed_once_by_its_route_template(serve: Any, server: str) -> None:
    port = free_port()
    cmd, plan = server_cmd(server, port)
    if shutil.which(cmd[0], path=str(BIN)) is None and cmd[0] != "python":
        pytest.skip(f"{cmd[0]} is not installed in this environment")
    pytest.importorskip(server.split("/")[0])
    probe = plan[0][0]
    service = serve(cmd, port, probe=probe)
    for path, status, _ in plan:
        assert service.get(path) == status, f"{path} answered another status than {status}"
    expected: dict[str, int] = {}
    for _path, _, metric in plan:
        expected[metric] = expected.get(metric, 0) + 1
    expected[plan[0][2]] += 1  # the readiness probe
    timings = service.wait_counts(expected)

    for name in timings:
        assert not any(raw in name for raw in RAW), f"a raw path became a metric name: {name}"
    for _path, status, metric in plan:
        if status == 500:
            assert timings[metric]["errors"] == expected[metric], f"{metric} must count its 5xx as errors"
    ok = [m for _, s, m in plan if s < 500]
    assert all(timings[m]["errors"] == 0 for m in ok), timings
    # The app's time of a request is inside the client's, which runs from connect to the server's close
    # (after the app's body is closed); 0.1 ms for the rounding of both figures.
    slowest_client = max(ms for times in service.client_ms.values() for ms in times)
    for name, t in timings.items():
        assert 0 < t["max_ms"] <= slowest_client + 0.1, (name, t["max_ms"], slowest_client)


def test_an_app_that_also_adds_the_middleware_is_timed_once(serve: Any) -> None:
    port = free_port()
    cmd, _ = server_cmd("flask/gunicorn-sync", port)
    service = serve(cmd, port, env={"PERFTOP_TEST_WRAP": "1"}, probe="/orders/7")
    for name in ("alice", "bob"):
        assert service.get(f"/user/{name}") == 200
    service.wait_counts({"http GET /user/{username}": 2, "http GET /orders/{order_id}": 1})


def test_the_hand_added_middleware_finds_flasks_route_without_perftop_run() -> None:
    """Flask pops its request (and clears `werkzeug.request`) before the server closes the body, which is
    when the middleware names the request: it must have noted the rule while the request was live."""
    pytest.importorskip("flask")
    code = (
        "import os, perftop\n"
        "os.environ['PERFTOP_TEST_WRAP'] = '1'\n"
        "from tests.targets.web.flask_app import app\n"
        "from perftop.agent.recorder import registry\n"
        "c = app.test_client()\n"
        "for n in ('alice', 'bob'):\n"
        "    c.get(f'/user/{n}').close()\n"
        "print(sorted(n for n in registry.timings if n.startswith('http ')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['http GET /user/{username}']", out.stdout


@pytest.mark.parametrize("how", ["flag", "env"])
def test_framework_timing_can_be_turned_off(serve: Any, how: str) -> None:
    port = free_port()
    cmd, _ = server_cmd("flask/gunicorn-sync", port)
    if how == "flag":
        service = serve(cmd, port, options=("--no-frameworks",))
    else:
        service = serve(cmd, port, env={"PERFTOP_FRAMEWORKS": "0"})
    for name in ("alice", "bob"):
        assert service.get(f"/user/{name}") == 200
    time.sleep(1.5)
    assert service.timings() == {}


@pytest.mark.parametrize("server", ["flask/gunicorn-sync", "fastapi/uvicorn"])
def test_queue_wait_from_x_request_start(serve: Any, server: str) -> None:
    """A proxy's X-Request-Start stamp (seconds, milliseconds or microseconds since the epoch) becomes the
    `http.queue` timing: the time between the stamp and the app getting the request."""
    port = free_port()
    cmd, plan = server_cmd(server, port)
    service = serve(cmd, port, probe=plan[0][0])
    waits = [0.25, 0.5, 0.75]
    formats = [lambda t: f"t={t:.3f}", lambda t: f"t={int(t * 1e3)}", lambda t: f"t={int(t * 1e6)}"]
    sent = []
    for wait, fmt in zip(waits, formats, strict=True):
        before = time.time()
        assert service.get("/user/queued", headers={"X-Request-Start": fmt(before - wait)}) == 200
        sent.append((wait, time.time() - before))
    assert service.get("/user/nostamp") == 200
    assert service.get("/user/garbage", headers={"X-Request-Start": "t=yesterday"}) == 200
    queue = wait_for(lambda: service.timings("http.queue"), 30, "an http.queue timing", interval=0.3)
    assert list(queue) == ["http.queue"], queue
    stats = queue["http.queue"]
    assert stats["count"] == len(waits), stats
    # Each recorded wait is the stamped one plus at most the client's round trip (stamp precision: 1 ms).
    assert waits[0] * 1000 - 1 <= stats["min_ms"] <= (waits[0] + sent[0][1]) * 1000 + 1, stats
    assert waits[-1] * 1000 - 1 <= stats["max_ms"] <= (waits[-1] + sent[-1][1]) * 1000 + 1, stats


def sql_app_db(tmp_path: Path) -> dict[str, str]:
    """The SQLite file of flask_sql_app, made before its workers start (two creating it at once collide)."""
    db = str(tmp_path / "app.db")
    env = {**os.environ, "PERFTOP": "0", "PERFTOP_TEST_DB": db}
    subprocess.run(
        [sys.executable, "-c", "import tests.targets.web.flask_sql_app"], cwd=REPO, env=env, check=True
    )
    return {"PERFTOP_TEST_DB": db}


def test_each_route_shows_its_sql_time_and_queries_per_request(serve: Any, tmp_path: Path) -> None:
    """Concurrent requests of three routes on threaded gunicorn workers: each route's queries per request
    are exact (nothing leaks between requests served side by side), its SQL time per request agrees with
    the app's own timing of the same statements, and its slowest requests list their queries in order."""
    from concurrent.futures import ThreadPoolExecutor

    port = free_port()
    cmd = gunicorn("tests.targets.web.flask_sql_app:app", port, "-k", "gthread", "--threads", "4")
    service = serve(cmd, port, env=sql_app_db(tmp_path), probe="/fast")

    def get_json(path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body

    paths = ["/users/3/posts"] * 40 + ["/fast"] * 40 + ["/slow/300"] * 2
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(get_json, paths))
    app_sql = [a["sql_ms"] for p, a in zip(paths, answers, strict=True) if p == "/users/3/posts"]
    assert all(a["queries"] == 6 for p, a in zip(paths, answers, strict=True) if p.startswith("/users"))

    names = {"GET /users/{uid}/posts": 40, "GET /fast": 41, "GET /slow/{ms}": 2}

    def counted() -> dict[str, Any]:
        """The snapshot's requests once the routes' counts are `names`', else an empty dict."""
        routes: dict[str, Any] = service.snapshot()["requests"]
        return routes if {r: routes.get(r, {}).get("count") for r in names} == names else {}

    routes = wait_for(counted, 30, f"the requests counted as {names}", interval=0.3)

    posts, fast, slow = (routes[r] for r in names)
    assert posts["queries_mean"] == pytest.approx(6.0) and posts["queries_max"] == 6
    assert posts["queries_p99"] == pytest.approx(6.0, rel=0.01)
    assert fast["queries_max"] == 0 and fast["sql_ms_mean"] == 0
    assert slow["queries_max"] == 1
    # SQL time per request against the app's own timing of the same statements (execute + fetch): each
    # query's time as perftop records it lies inside the app's measurement of it; for these 0.1 ms SQLite
    # lookups SQLAlchemy's own work around the driver call (compiling, row processing) is a large share.
    app_mean = sum(app_sql) / len(app_sql)
    assert 0.4 * app_mean <= posts["sql_ms_mean"] <= app_mean * 1.05 + 0.05, (posts["sql_ms_mean"], app_mean)
    assert slow["sql_share_percent"] < 10 < posts["sql_share_percent"]
    assert posts["top_fingerprints"][:2] == [
        "SELECT name FROM users WHERE id = ?",
        "SELECT id, user_id FROM posts WHERE user_id = ?",
    ] or posts["top_fingerprints"][:2] == [
        "SELECT id, user_id FROM posts WHERE user_id = ?",
        "SELECT name FROM users WHERE id = ?",
    ]
    # Each fingerprint names the routes that ran it (CLI.md `queries[].routes`), merged over the workers.
    ran_by = {q["fingerprint"]: q["routes"] for q in service.snapshot()["queries"]}
    assert ran_by["SELECT name FROM users WHERE id = ?"] == ["GET /users/{uid}/posts"]
    assert ran_by["SELECT id, user_id FROM posts WHERE user_id = ?"] == ["GET /users/{uid}/posts"]
    assert ran_by["SELECT count(*) FROM posts"] == ["GET /slow/{ms}"]
    # The waterfall of a slow request: its one query, the rest of its 300 ms outside SQL.
    slowest = slow["slowest"][0]
    assert slowest["duration_ms"] >= 300 and [q["fingerprint"] for q in slowest["queries"]] == [
        "SELECT count(*) FROM posts"
    ]
    waterfall = posts["slowest"][0]["queries"]
    assert [q["fingerprint"] for q in waterfall] == ["SELECT id, user_id FROM posts WHERE user_id = ?"] + [
        "SELECT name FROM users WHERE id = ?"
    ] * 5
    assert all(q["call_site"]["file"].endswith("flask_sql_app.py") for q in waterfall)

    # The same figures in the Prometheus export, per worker: summed over the workers, every request is
    # there, each with its six queries; and the master's listening socket with its backlog.
    from prometheus_client.parser import text_string_to_metric_families

    from tests.targets.exp_procs import Command, http_get

    sockets = service.env["PERFTOP_SOCKET_DIR"]
    with Command(
        "export", "--listen", "127.0.0.1:0", "--socket-dir", sockets, "--pid", str(service.proc.pid)
    ) as cmd:
        exporting = cmd.wait_line(r"exporting on http://[^:]+:(\d+)/metrics").group(1)
        url = f"http://127.0.0.1:{exporting}/metrics"
        status, _, body = http_get(url, fresh=True)
    assert status == 200
    found = [(x.name, x.labels, x.value) for fam in text_string_to_metric_families(body) for x in fam.samples]
    route = "GET /users/{uid}/posts"

    def total(name: str, **labels: str) -> float:
        values = [v for n, lab, v in found if n == name and all(lab.get(k) == w for k, w in labels.items())]
        assert values, f"no {name} {labels} in the scrape"
        return sum(values)

    assert total("perftop_request_queries_count", route=route) == 40
    assert total("perftop_request_queries_sum", route=route) == 240
    assert total("perftop_request_queries_bucket", route=route, le="5") == 0
    assert total("perftop_request_queries_bucket", route=route, le="10") == 40
    assert total("perftop_request_sql_seconds_count", route=route) == 40
    assert total("perftop_request_sql_seconds_sum", route=route) == pytest.approx(
        posts["sql_ms_mean"] * 40 / 1000, rel=0.01
    )
    assert (
        total("perftop_process_listen_backlog_max", pid=str(service.proc.pid), address=f"127.0.0.1:{port}")
        > 0
    )


def test_an_n_plus_one_inside_a_template_points_at_the_template_line(serve: Any, tmp_path: Path) -> None:
    """An ORM lazy load run from a Jinja2 loop: the N+1's call site is the template's line, not Jinja2's
    or SQLAlchemy's frames, and the route's breakdown counts the 21 queries of the request."""
    port = free_port()
    cmd = gunicorn("tests.targets.web.flask_sql_app:app", port)
    service = serve(cmd, port, env=sql_app_db(tmp_path), probe="/fast")
    assert service.get("/page") == 200

    def flagged() -> dict[str, Any]:
        """The snapshot once the lazy load is flagged as an N+1, else an empty dict."""
        snap = service.snapshot()
        lazy = [q for q in snap["queries"] if q["fingerprint"].startswith("SELECT users.id")]
        return snap if lazy and lazy[0]["n_plus_one"] else {}

    snap = wait_for(flagged, 30, "the lazy load flagged as an N+1", interval=0.3)
    lazy = [q for q in snap["queries"] if q["fingerprint"].startswith("SELECT users.id")]
    assert lazy and lazy[0]["count"] == 20 and lazy[0]["n_plus_one"], snap["queries"]
    site = lazy[0]["n_plus_one_site"]
    assert site["file"].endswith("templates/posts.html") and site["line"] == 3, site
    page = snap["requests"]["GET /page"]
    assert page["count"] == 1 and page["queries_max"] == 21
    assert {q["call_site"]["file"].rsplit("/", 1)[-1] for q in page["slowest"][0]["queries"]} == {
        "flask_sql_app.py",
        "posts.html",
    }
