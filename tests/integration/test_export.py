"""`perftop export` against real instrumented processes, scraped over HTTP and read with prometheus_client's
parsers: values, fleet-wide histogram_quantile, agents coming and going, content negotiation."""

from __future__ import annotations

import gzip
import math
import resource
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack

import psutil
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from perftop.collectors.agent_client import AgentClient
from perftop.export.prometheus.families import BUCKETS_S
from perftop.wire.sketch import ALPHA
from tests.helpers import start_exp_target, start_exporter, wait_for
from tests.targets.exp_procs import http_get, run
from tests.targets.exp_target import samples

OPENMETRICS = "application/openmetrics-text; version=1.0.0"

Sample = tuple[str, dict[str, str], float]


def scrape(url: str, fresh: bool = True) -> list[Sample]:
    """One scrape, parsed. `fresh` (Cache-Control: no-cache) sees the state of this instant: tests that
    change what the exporter sees between scrapes need it; a scraper like Prometheus does not send it."""
    status, content_type, body = http_get(f"{url}/metrics", fresh=fresh)
    assert status == 200, body
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    return [(s.name, s.labels, s.value) for fam in parse_text(body) for s in fam.samples]


def value(found: list[Sample], name: str, **labels: str) -> float:
    matches = [v for n, lab, v in found if n == name and all(lab.get(k) == w for k, w in labels.items())]
    assert len(matches) == 1, f"{name} {labels}: {len(matches)} samples"
    return matches[0]


def buckets(found: list[Sample], **labels: str) -> list[tuple[float, float]]:
    """(le, cumulative count) of one histogram series, by le."""
    out = [
        (float(lab["le"]), v)
        for n, lab, v in found
        if n == "perftop_timing_histogram_seconds_bucket" and all(lab.get(k) == w for k, w in labels.items())
    ]
    return sorted(out)


def histogram_quantile(q: float, series: list[tuple[float, float]]) -> float:
    """PromQL's histogram_quantile over (le, cumulative count) pairs sorted by le, +Inf last."""
    total = series[-1][1]
    rank = q * total
    lower_le, lower_count = 0.0, 0.0
    for le, count in series:
        if count >= rank:
            if math.isinf(le):
                return lower_le  # the quantile is in the +Inf bucket: the highest finite bound
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    raise AssertionError("rank beyond the +Inf bucket")


def exact_quantile(values: list[float], q: float) -> float:
    """The nearest rank ceil(q * n), the summaries' definition."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)), 1) - 1]


def test_timing_is_a_summary_and_a_histogram_with_the_calls_made(stack: ExitStack, sock_dir: str) -> None:
    app = start_exp_target(stack, sock_dir, "shop")
    assert app.cmd("work 250") == "done 250"
    assert app.cmd("samples latency 7 400") == "done 400"
    assert app.cmd("count cache.hit 7") == "done"
    assert app.cmd("gauge queue.depth 3.5") == "done"
    url = start_exporter(stack, sock_dir)
    found = scrape(url)
    pid = str(app.pid)
    key = {"app": "shop", "pid": pid}

    assert value(found, "perftop_agent_up", **key) == 1.0
    assert value(found, "perftop_timing_seconds_count", metric="work", **key) == 250
    assert value(found, "perftop_timing_histogram_seconds_count", metric="work", **key) == 250
    assert buckets(found, metric="work", **key)[-1] == (math.inf, 250)
    assert value(found, "perftop_timing_errors_total", metric="work", **key) == 0
    assert value(found, "perftop_counter_total", metric="cache.hit", **key) == 7
    assert value(found, "perftop_gauge", metric="queue.depth", **key) == 3.5

    # The summary's quantiles are the sketch's: within its relative accuracy of the exact ones.
    values_s = [ms / 1000 for ms in samples(7, 400)]
    for q in ("0.5", "0.9", "0.99"):
        got = value(found, "perftop_timing_seconds", metric="latency", quantile=q, **key)
        assert got == pytest.approx(exact_quantile(values_s, float(q)), rel=2 * ALPHA)
    assert value(found, "perftop_timing_seconds_sum", metric="latency", **key) == pytest.approx(
        sum(values_s), rel=1e-9
    )
    # Each bucket counts the values at or under its bound (a value within the sketch's accuracy of the
    # bound may land in the next bucket, never in an earlier one).
    series = buckets(found, metric="latency", **key)
    assert [le for le, _ in series] == [*BUCKETS_S, math.inf]
    for le, count in series[:-1]:
        assert sum(v <= le * (1 - 2 * ALPHA) for v in values_s) <= count <= sum(v <= le for v in values_s)
    assert series[-1][1] == 400

    # The process behind the agent, its limits, and the host.
    assert value(found, "perftop_process_resident_memory_bytes", **key) > 0
    soft_nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # the target inherits ours
    assert value(found, "perftop_process_limit_soft", limit="nofile", **key) == soft_nofile
    assert value(found, "perftop_system_memory_total_bytes") == psutil.virtual_memory().total
    assert 0 <= value(found, "perftop_system_cpu_percent") <= 100

    status, _, body = http_get(f"{url}/healthz")
    assert (status, body) == (200, "ok\n")
    assert http_get(f"{url}/nope")[0] == 404


def test_histogram_quantile_across_two_processes_matches_the_merged_exact_p99(
    stack: ExitStack, sock_dir: str
) -> None:
    a, b = start_exp_target(stack, sock_dir, "api"), start_exp_target(stack, sock_dir, "api")
    assert a.cmd("samples request 1 3000") == "done 3000"
    assert b.cmd("samples request 2 2000") == "done 2000"
    found = scrape(start_exporter(stack, sock_dir))
    per_pid = [buckets(found, metric="request", pid=str(t.pid)) for t in (a, b)]
    assert [s[-1][1] for s in per_pid] == [3000, 2000]
    # sum by (le) (...) across the two processes, then histogram_quantile(0.99, ...)
    summed = [(le, ca + cb) for (le, ca), (_, cb) in zip(*per_pid, strict=True)]
    estimate = histogram_quantile(0.99, summed)
    exact = exact_quantile([ms / 1000 for ms in samples(1, 3000) + samples(2, 2000)], 0.99)
    # Within the resolution of the buckets: in the bucket holding the exact p99 (widened by the
    # sketch's accuracy, as a value that close to a bound can be counted in the next bucket).
    bounds = [0.0, *BUCKETS_S]
    k = next(i for i, le in enumerate(BUCKETS_S) if exact <= le)
    assert bounds[k] * (1 - 2 * ALPHA) <= estimate <= bounds[k + 1] * (1 + 2 * ALPHA), (estimate, exact)


def test_agents_are_picked_up_and_dropped_without_restart(stack: ExitStack, sock_dir: str) -> None:
    url = start_exporter(stack, sock_dir)
    assert not [s for s in scrape(url) if s[0] == "perftop_agent_up"]
    first = start_exp_target(stack, sock_dir, "first")
    first.cmd("work 3")
    found = scrape(url)
    assert value(found, "perftop_timing_seconds_count", metric="work", pid=str(first.pid)) == 3
    second = start_exp_target(stack, sock_dir, "second")
    second.cmd("work 5")
    found = scrape(url)
    assert {lab["pid"] for n, lab, _ in found if n == "perftop_agent_up"} == {str(first.pid), str(second.pid)}

    # One exits cleanly (its socket goes), the other is SIGKILLed (its socket file stays behind).
    first.proc.stdin.write("exit\n")  # type: ignore[union-attr]
    first.proc.stdin.flush()  # type: ignore[union-attr]
    first.proc.wait(timeout=20)
    found = scrape(url)
    assert not [s for s in found if s[1].get("pid") == str(first.pid)]
    assert value(found, "perftop_timing_seconds_count", metric="work", pid=str(second.pid)) == 5
    second.proc.kill()
    second.proc.wait(timeout=20)
    found = scrape(url)
    assert not [s for s in found if "pid" in s[1]]


def test_openmetrics_by_content_negotiation(stack: ExitStack, sock_dir: str) -> None:
    app = start_exp_target(stack, sock_dir, "om")
    app.cmd("work 12")
    url = start_exporter(stack, sock_dir)
    status, content_type, body = http_get(f"{url}/metrics", accept=OPENMETRICS)
    assert status == 200
    assert content_type.startswith("application/openmetrics-text; version=1.0.0"), content_type
    assert body.endswith("# EOF\n")
    families = {fam.name: fam for fam in parse_openmetrics(body)}
    assert families["perftop_timing_seconds"].type == "summary"
    assert families["perftop_timing_histogram_seconds"].type == "histogram"
    counts = [
        s.value
        for s in families["perftop_timing_histogram_seconds"].samples
        if s.name.endswith("_count") and s.labels["metric"] == "work"
    ]
    assert counts == [12]
    # Compressed for a scraper that accepts it, as Prometheus does.
    request = urllib.request.Request(f"{url}/metrics", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(response.read()).decode()
    assert 'perftop_timing_histogram_seconds_count{app="om",metric="work"' in text
    # No Accept header: the Prometheus text format.
    _, content_type, body = http_get(f"{url}/metrics")
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    assert "# EOF" not in body


def test_pid_without_agent_and_query_fingerprints_top_n(stack: ExitStack, sock_dir: str) -> None:
    plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    stack.callback(plain.wait)
    stack.callback(plain.kill)
    app = start_exp_target(stack, sock_dir, "sql")
    assert app.cmd("sql t_big:60,t_mid:20,t_small:3") == "done"
    # A process with no agent, exported because of --pid: under its process name, dropped once it exits.
    url = start_exporter(stack, sock_dir, "--max-queries", "2", "--pid", str(plain.pid))
    found = scrape(url)
    name = psutil.Process(plain.pid).name()
    assert value(found, "perftop_process_threads", pid=str(plain.pid), app=name) == 1
    assert not [s for s in found if s[0] == "perftop_agent_up" and s[1]["pid"] == str(plain.pid)]
    plain.kill()
    plain.wait()
    assert not [s for s in scrape(url) if s[1].get("pid") == str(plain.pid)]

    found = scrape(url)
    with AgentClient(app.socket) as client:  # what the agent itself says, to compare with
        stats = client.call("stats", {"window": None})
    rows = sorted(stats["queries"]["queries"], key=lambda r: r["total_ms"], reverse=True)
    exported = {lab["fingerprint"]: v for n, lab, v in found if n == "perftop_query_calls_total"}
    assert exported == {r["fingerprint"]: r["count"] for r in rows[:2]}
    assert value(found, "perftop_query_fingerprints_not_exported", pid=str(app.pid)) == len(rows) - 2
    for r in rows[:2]:
        seconds = value(found, "perftop_query_seconds_total", fingerprint=r["fingerprint"])
        assert seconds == pytest.approx(r["total_ms"] / 1000)


def test_refresh_answers_from_a_background_collection(stack: ExitStack, sock_dir: str) -> None:
    app = start_exp_target(stack, sock_dir, "bg")
    app.cmd("work 10")
    url = start_exporter(stack, sock_dir, "--refresh", "0.2")

    def count() -> float | None:
        found = scrape(url)
        got = [
            v for n, lab, v in found if n == "perftop_timing_seconds_count" and lab.get("metric") == "work"
        ]
        return got[0] if got else None

    wait_for(lambda: count() == 10, timeout=20)
    app.cmd("work 5")
    wait_for(lambda: count() == 15, timeout=20)


def scrape_with_headers(url: str) -> tuple[list[Sample], str, float]:
    """A scrape as Prometheus makes it, with how the exporter made its answer and the data's age."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        body = response.read().decode()
        made, age = response.headers["X-Perftop-Rendered"], float(response.headers["X-Perftop-Data-Age"])
    return [(s.name, s.labels, s.value) for fam in parse_text(body) for s in fam.samples], made, age


def test_regular_scrapes_are_answered_from_a_collection_made_ahead(stack: ExitStack, sock_dir: str) -> None:
    """The default: once the exporter has seen the scrapes' rhythm, it collects just before each one."""
    app = start_exp_target(stack, sock_dir, "paced")
    app.cmd("work 10")
    url = start_exporter(stack, sock_dir)
    answers = []
    for _ in range(6):
        found, made, age = scrape_with_headers(url)
        answers.append((made, age))
        assert value(found, "perftop_timing_seconds_count", metric="work", pid=str(app.pid)) == 10
        time.sleep(1.0)
    assert answers[0][0] == "on-request" and answers[1][0] == "on-request", answers  # no rhythm yet
    assert [made for made, _ in answers[3:]] == ["ahead"] * 3, answers
    assert all(age < 3.0 for _, age in answers), answers
    # What changes between scrapes shows up in the next ones: at most one collection behind.
    app.cmd("work 5")
    counts = []
    for _ in range(2):
        time.sleep(1.0)
        found, _, _ = scrape_with_headers(url)
        counts.append(value(found, "perftop_timing_seconds_count", metric="work", pid=str(app.pid)))
    assert counts[-1] == 15, counts
    # Cache-Control: no-cache gets this instant's state, collected for the request.
    status, _, _ = http_get(f"{url}/metrics", fresh=True)
    assert status == 200


def test_refresh_0_collects_on_every_scrape(stack: ExitStack, sock_dir: str) -> None:
    app = start_exp_target(stack, sock_dir, "each")
    app.cmd("work 3")
    url = start_exporter(stack, sock_dir, "--refresh", "0")
    for _ in range(4):
        found, made, _ = scrape_with_headers(url)
        assert made == "on-request"
        assert value(found, "perftop_timing_seconds_count", metric="work", pid=str(app.pid)) == 3
        time.sleep(0.3)


def test_bad_arguments_are_one_line_errors(sock_dir: str) -> None:
    for args, fragment in (
        (("--listen", "nowhere"), "HOST:PORT"),
        (("--listen", "127.0.0.1:99999"), "between 0 and 65535"),
        (("--pid", "999999999"), "PID must be a positive whole number up to"),
        (("--pid", "4194303"), "no process with PID 4194303"),
        (("--refresh", "soon"), "expected auto or a number of seconds"),
        (("--refresh", "-1"), "between 0 and 3600"),
    ):
        result = run("export", "--socket-dir", sock_dir, *args)
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("perftop: ") and fragment in lines[0], result.stderr
