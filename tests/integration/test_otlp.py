"""`perftop export --otlp URL` against real instrumented processes, pushing to an OTLP/HTTP receiver run by
the test (http.server on 127.0.0.1) that decodes every ExportMetricsServiceRequest with opentelemetry-proto.

Oracles: the values the processes recorded (known to the test), `perftop snapshot --json` of each process,
and the exact OTLP bucket of every recorded value."""

from __future__ import annotations

import gzip
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    ExponentialHistogramDataPoint,
    Metric,
    ResourceMetrics,
)

from perftop.wire.sketch import ALPHA
from tests.helpers import start_exp_target, wait_for
from tests.targets.agent_harness import ROOT, target_env
from tests.targets.exp_procs import Command, http_get, run
from tests.targets.exp_target import samples

SCALE = 5
BASE = 2.0 ** (2.0**-SCALE)
QUANTILE_REL = 0.02
"""The promised accuracy of a quantile read from the pushed buckets (1.08% bucket, 0.8% sketch)."""


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP metrics receiver: POST /v1/metrics, protobuf body (gzip or deflate as announced),
    answered with `status` (settable: 503 plays a collector in trouble)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.status = 200
        self.lock = threading.Lock()
        self.accepted: list[ExportMetricsServiceRequest] = []
        self.answered: list[int] = []
        """The status of every POST, in order."""
        self.paths: set[str] = set()
        self.content_types: set[str] = set()
        self.encodings: set[str] = set()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def latest(self) -> ExportMetricsServiceRequest | None:
        with self.lock:
            return self.accepted[-1] if self.accepted else None


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        with self.server.lock:
            status = self.server.status
            self.server.answered.append(status)
            self.server.paths.add(self.path)
            self.server.content_types.add(self.headers.get("Content-Type", ""))
            self.server.encodings.add(encoding)
            if status == 200:
                self.server.accepted.append(request)
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def pusher(stack: ExitStack, sock_dir: str, url: str, *args: str) -> Command:
    cmd = stack.enter_context(
        Command("export", "--otlp", url, "--otlp-interval", "0.5", "--socket-dir", sock_dir, *args)
    )
    cmd.wait_line(r"pushing OTLP to .*/v1/metrics every 0\.5 s")
    return cmd


def attrs(kvs: Any) -> dict[str, Any]:
    """OTLP attributes as a dict of plain values."""
    out: dict[str, Any] = {}
    for kv in kvs:
        assert isinstance(kv, KeyValue)
        out[kv.key] = getattr(kv.value, kv.value.WhichOneof("value"))
    return out


def resource_of(request: ExportMetricsServiceRequest, pid: int) -> ResourceMetrics | None:
    found = [rm for rm in request.resource_metrics if attrs(rm.resource.attributes).get("process.pid") == pid]
    assert len(found) <= 1
    return found[0] if found else None


def metric(rm: ResourceMetrics, name: str) -> Metric:
    found = [m for sm in rm.scope_metrics for m in sm.metrics if m.name == name]
    assert len(found) == 1, f"{name}: {len(found)}"
    return found[0]


def point(rm: ResourceMetrics, name: str, **labels: str) -> Any:
    m = metric(rm, name)
    data = getattr(m, m.WhichOneof("data"))
    found = [p for p in data.data_points if all(attrs(p.attributes).get(k) == v for k, v in labels.items())]
    assert len(found) == 1, f"{name} {labels}: {len(found)}"
    return found[0]


def timing(request: ExportMetricsServiceRequest | None, pid: int, name: str) -> Any:
    """The exponential histogram point of timing `name` of process `pid`, None if not pushed yet."""
    rm = resource_of(request, pid) if request is not None else None
    if rm is None:
        return None
    for sm in rm.scope_metrics:
        for m in sm.metrics:
            if m.name == "perftop_timing_histogram_seconds":
                for p in m.exponential_histogram.data_points:
                    if attrs(p.attributes).get("metric") == name:
                        return p
    return None


def bucket_index(value: float) -> int:
    """The OTLP bucket (BASE**i, BASE**(i+1)] of a positive value, by the specification's definition."""
    return math.ceil(math.log2(value) * 2**SCALE) - 1


def quantiles(p: ExponentialHistogramDataPoint, qs: list[float]) -> list[float]:
    """Nearest-rank quantiles from the buckets: the rank's bucket log-midpoint 2 * BASE**(i+1) / (1 + BASE),
    clamped to the exact min and max."""
    total = p.zero_count + sum(p.positive.bucket_counts)
    out = []
    for q in qs:
        rank = max(math.ceil(q * total), 1)
        seen = p.zero_count
        value = 0.0
        if rank > seen:
            for k, n in enumerate(p.positive.bucket_counts):
                seen += n
                if seen >= rank:
                    value = 2.0 * BASE ** (p.positive.offset + k + 1) / (1.0 + BASE)
                    break
        out.append(min(max(value, p.min), p.max))
    return out


def exact_quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


def snapshot(sock_dir: str, pid: int) -> dict[str, Any]:
    done = run("snapshot", "--pid", str(pid), "--json", "--interval", "0.1", "--socket-dir", sock_dir)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_push_carries_exact_counts_and_quantiles_of_two_processes(
    stack: ExitStack, sock_dir: str, receiver: Receiver
) -> None:
    a, b = start_exp_target(stack, sock_dir, "api"), start_exp_target(stack, sock_dir, "api")
    assert a.cmd("samples request 1 3000") == "done 3000"
    assert b.cmd("samples request 2 2000") == "done 2000"
    assert a.cmd("work 250") == "done 250"
    assert a.cmd("count cache.hit 7") == "done"
    assert a.cmd("gauge queue.depth 3.5") == "done"
    before = time.time()
    cmd = pusher(stack, sock_dir, receiver.url)

    def pushed() -> ExportMetricsServiceRequest | None:
        latest = receiver.latest()
        return latest if timing(latest, a.pid, "request") and timing(latest, b.pid, "request") else None

    request = wait_for(pushed, timeout=30)
    assert receiver.paths == {"/v1/metrics"}
    assert receiver.content_types == {"application/x-protobuf"}
    assert receiver.encodings == {"gzip"}  # by default (OTEL_EXPORTER_OTLP_COMPRESSION may say otherwise)

    # One resource per process: host, service name (the agent's name) and pid.
    for t in (a, b):
        rm = resource_of(request, t.pid)
        assert rm is not None
        resource = attrs(rm.resource.attributes)
        assert resource["host.name"] == socket.gethostname()
        assert resource["service.name"] == "api"
        assert resource["process.pid"] == t.pid
        assert resource["service.instance.id"] == f"{socket.gethostname()}:{t.pid}"

    known = {a.pid: samples(1, 3000), b.pid: samples(2, 2000)}
    for t in (a, b):
        p = timing(request, t.pid, "request")
        values_s = [ms / 1000 for ms in known[t.pid]]
        rm = resource_of(request, t.pid)
        assert rm is not None
        m = metric(rm, "perftop_timing_histogram_seconds")
        assert m.unit == "s"
        assert m.exponential_histogram.aggregation_temporality == AggregationTemporality.Value(
            "AGGREGATION_TEMPORALITY_CUMULATIVE"
        )
        assert p.scale == SCALE
        assert p.count == len(values_s)  # exactly
        assert p.zero_count == 0 and sum(p.positive.bucket_counts) == p.count
        assert p.sum == pytest.approx(sum(values_s), rel=1e-9)
        assert (p.min, p.max) == (pytest.approx(min(values_s)), pytest.approx(max(values_s)))
        assert p.start_time_unix_nano <= p.time_unix_nano
        assert psutil.Process(t.pid).create_time() - 1 <= p.start_time_unix_nano / 1e9 <= before

        # Every value is counted in its own bucket, or in a neighbour when it lies within the sketch's
        # accuracy of the bound between them: cumulative counts at each bound agree to that.
        cumulative = 0
        for k, n in enumerate(p.positive.bucket_counts):
            cumulative += n
            bound = BASE ** (p.positive.offset + k + 1)
            low = sum(bucket_index(v) <= p.positive.offset + k for v in values_s if v <= bound / (1 + ALPHA))
            high = sum(v <= bound * (1 + ALPHA) for v in values_s)
            assert low <= cumulative <= high, (k, low, cumulative, high)

        # p50 and p99 read from the buckets: against perftop's own snapshot and against the exact values.
        snap = snapshot(sock_dir, t.pid)["timings"]["request"]
        p50, p99 = quantiles(p, [0.5, 0.99])
        assert p50 * 1000 == pytest.approx(snap["p50_ms"], rel=QUANTILE_REL)
        assert p99 * 1000 == pytest.approx(snap["p99_ms"], rel=QUANTILE_REL)
        assert p50 == pytest.approx(exact_quantile(values_s, 0.5), rel=QUANTILE_REL)
        assert p99 == pytest.approx(exact_quantile(values_s, 0.99), rel=QUANTILE_REL)

    # Per-process series merge downstream: same scale, buckets add; the merged p99 is the fleet's.
    pa, pb = timing(request, a.pid, "request"), timing(request, b.pid, "request")
    offset = min(pa.positive.offset, pb.positive.offset)
    size = max(x.positive.offset + len(x.positive.bucket_counts) for x in (pa, pb)) - offset
    merged = [0] * size
    for x in (pa, pb):
        for k, n in enumerate(x.positive.bucket_counts):
            merged[x.positive.offset - offset + k] += n
    both = ExponentialHistogramDataPoint(
        scale=SCALE, count=pa.count + pb.count, min=min(pa.min, pb.min), max=max(pa.max, pb.max)
    )
    both.positive.offset = offset
    both.positive.bucket_counts.extend(merged)
    every_s = [ms / 1000 for ms in known[a.pid] + known[b.pid]]
    assert quantiles(both, [0.99])[0] == pytest.approx(exact_quantile(every_s, 0.99), rel=QUANTILE_REL)

    # Counters (cumulative, monotonic, from the agent's start), gauges, the plain @time_it timing.
    rm = resource_of(request, a.pid)
    assert rm is not None
    hits = metric(rm, "perftop_counter")
    assert hits.sum.is_monotonic
    assert hits.sum.aggregation_temporality == AggregationTemporality.Value(
        "AGGREGATION_TEMPORALITY_CUMULATIVE"
    )
    assert point(rm, "perftop_counter", metric="cache.hit", pid=str(a.pid), app="api").as_double == 7
    assert point(rm, "perftop_gauge", metric="queue.depth").as_double == 3.5
    assert timing(request, a.pid, "work").count == 250
    assert point(rm, "perftop_process_resident_memory_bytes").as_double > 0
    # The exporter's own resource: the host and the push's counters.
    own = [
        rm
        for rm in request.resource_metrics
        if attrs(rm.resource.attributes)["service.name"] == "perftop-export"
    ]
    assert len(own) == 1
    assert point(own[0], "perftop_system_memory_total_bytes").as_double == psutil.virtual_memory().total
    assert point(own[0], "perftop_export_otlp_failures").as_double == 0
    assert "Traceback" not in cmd.stderr


def test_failing_receiver_backs_off_counts_and_collection_goes_on(
    stack: ExitStack, sock_dir: str, receiver: Receiver
) -> None:
    app = start_exp_target(stack, sock_dir, "shop")
    assert app.cmd("work 100") == "done 100"
    receiver.status = 503
    cmd = pusher(stack, sock_dir, receiver.url, "--listen", "127.0.0.1:0")
    listening = re.search(r"exporting on http://[^:]+:(\d+)/metrics", cmd.stderr)
    assert listening is not None
    port = listening.group(1)
    waits = [
        float(cmd.wait_line(rf"failed \(.+\); next try in ([\d.]+) s \(failures so far: {n}\)").group(1))
        for n in (1, 2, 3)
    ]
    assert waits == [0.5, 1.0, 2.0]  # the interval, doubled per failure in a row
    assert not receiver.accepted and receiver.answered.count(503) >= 3
    # Meanwhile the scrape endpoint answers, and what the app does goes on being collected.
    assert app.cmd("work 100") == "done 100"
    status, _, body = http_get(f"http://127.0.0.1:{port}/metrics", fresh=True)
    assert status == 200
    assert f'perftop_timing_seconds_count{{app="shop",metric="work",pid="{app.pid}"}} 200.0' in body
    # The failures are in the exporter's own metrics, scraped as pushed.
    failed = re.search(r"^perftop_export_otlp_failures_total ([\d.]+)$", body, re.M)
    assert failed is not None and float(failed.group(1)) >= 3
    receiver.status = 200
    cmd.wait_line(r"works again after \d+ failed pushes", timeout=30)

    def caught_up() -> ExportMetricsServiceRequest | None:
        latest = receiver.latest()
        work = timing(latest, app.pid, "work")
        return latest if work is not None and work.count == 200 else None

    request = wait_for(caught_up, timeout=10)
    own = next(
        rm
        for rm in request.resource_metrics
        if attrs(rm.resource.attributes)["service.name"] == "perftop-export"
    )
    failures = point(own, "perftop_export_otlp_failures").as_double
    collections = point(own, "perftop_export_otlp_collections").as_double
    assert failures >= 3 and receiver.answered.count(503) >= failures
    # Collections went on at the interval while pushes waited: more than the pushes tried.
    assert collections > failures + 1
    assert point(own, "perftop_export_otlp_skipped").as_double >= 1
    assert cmd.proc.poll() is None
    assert "Traceback" not in cmd.stderr


def test_receiver_down_is_counted_and_nothing_else_stops(stack: ExitStack, sock_dir: str) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    start_exp_target(stack, sock_dir, "shop")
    cmd = pusher(stack, sock_dir, url)
    cmd.wait_line(r"failed \(\[Errno 111\] Connection refused\); next try in 0.5 s \(failures so far: 1\)")
    cmd.wait_line(r"next try in 1 s \(failures so far: 2\)")
    assert cmd.proc.poll() is None
    assert "Traceback" not in cmd.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--otlp", "ftp://collector:4318"), "--otlp wants an http:// or https:// URL with a host"),
        (("--otlp", "http://"), "--otlp wants an http:// or https:// URL with a host"),
        (("--otlp", "collector:4318"), "--otlp wants an http:// or https:// URL with a host"),
        (("--otlp", "http://collector:99999"), "--otlp URL has an invalid port"),
        (("--otlp", "http://collector:4318/?x=1"), "must not have a query"),
        (("--otlp", "http://127.0.0.1:4318", "--otlp-interval", "0"), "seconds must be between"),
        (("--otlp", "http://127.0.0.1:4318", "--otlp-interval", "soon"), "expected a number of seconds"),
    ],
)
def test_bad_otlp_arguments_are_one_line_errors(sock_dir: str, args: tuple[str, ...], message: str) -> None:
    done = run("export", "--socket-dir", sock_dir, *args, timeout=30)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2  # argparse's usage line and its one-line error


def test_without_the_opentelemetry_packages_otlp_is_a_one_line_error(sock_dir: str) -> None:
    """As on an install without the `otlp` extra: the exporter package cannot be imported."""
    code = (
        "import sys; sys.modules['opentelemetry.exporter.otlp.proto.http.metric_exporter'] = None; "
        "from perftop.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "export", "--otlp", "http://127.0.0.1:4318", "--socket-dir", sock_dir],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
        env=target_env(),
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("perftop: --otlp needs opentelemetry-sdk and opentelemetry-exporter-otlp")
    assert "pip install 'perftop[otlp]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def route_points(request: ExportMetricsServiceRequest | None, name: str, route: str) -> list[Any]:
    """The exponential histogram points of `name` for `route`, one per process that served it."""
    found = []
    for rm in request.resource_metrics if request is not None else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == name:
                    found += [
                        p
                        for p in m.exponential_histogram.data_points
                        if attrs(p.attributes)["route"] == route
                    ]
    return found


def test_routes_sql_time_and_queries_per_request_of_real_gunicorn_workers(
    stack: ExitStack, receiver: Receiver, tmp_path: Path
) -> None:
    """A Flask + SQLAlchemy app on two gunicorn workers under `perftop run`: each route's queries per
    request are known exactly (six on the N+1 route, none on /fast), so the pushed histograms' counts,
    sums and buckets are too; the SQL time agrees with perftop's own snapshot of the merged workers."""
    from tests.helpers import free_port
    from tests.integration.test_frameworks import Service, gunicorn, sql_app_db

    port = free_port()
    cmd = gunicorn("tests.targets.web.flask_sql_app:app", port, "-k", "gthread", "--threads", "2")
    service = Service(cmd, port, env=sql_app_db(tmp_path))
    stack.callback(service.stop)
    service.wait_ready("/fast")
    for _ in range(12):
        assert service.get("/users/3/posts") == 200
    for _ in range(4):
        assert service.get("/fast") == 200
    service.wait_counts({"http GET /users/{uid}/posts": 12, "http GET /fast": 5})
    pusher(stack, service.env["PERFTOP_SOCKET_DIR"], receiver.url)
    posts, fast = "GET /users/{uid}/posts", "GET /fast"

    def pushed() -> ExportMetricsServiceRequest | None:
        latest = receiver.latest()
        counts = [
            sum(p.count for p in route_points(latest, "perftop_request_queries", r)) for r in (posts, fast)
        ]
        return latest if counts == [12, 5] else None

    request = wait_for(pushed, timeout=30)
    queries = route_points(request, "perftop_request_queries", posts)
    assert sum(p.sum for p in queries) == 72
    six = math.ceil(math.log2(6) * 2**SCALE) - 1  # the bucket (BASE**i, BASE**(i+1)] holding 6
    for p in queries:  # every request of the route ran six queries: one bucket, the one of 6
        assert (p.min, p.max, p.zero_count) == (6, 6, 0)
        assert p.positive.offset == six and list(p.positive.bucket_counts) == [p.count]
    for p in route_points(request, "perftop_request_queries", fast):
        assert p.zero_count == p.count and not p.positive.bucket_counts and p.sum == 0
    for p in route_points(request, "perftop_request_sql_seconds", fast):
        assert p.zero_count == p.count and p.sum == 0
    sql = route_points(request, "perftop_request_sql_seconds", posts)
    assert sum(p.count for p in sql) == 12 and all(p.zero_count == 0 for p in sql)
    merged = service.snapshot()["requests"][posts]
    assert sum(p.sum for p in sql) == pytest.approx(merged["sql_ms_mean"] * merged["count"] / 1000, rel=1e-6)
