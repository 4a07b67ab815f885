"""`perftop export`'s histogram options against real instrumented processes: the classic resolution
(`--buckets-per-decade`), the series budget (`--max-series`), native histograms in OpenMetrics 2.0 (read
back with prometheus_client's parser) and in the text formats that cannot carry them."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from perftop.export.histograms import BASE, ladder, native_index
from perftop.export.prometheus.families import NATIVE_FAMILY
from perftop.wire.sketch import ALPHA, Sketch, bucket_of
from tests.helpers import start_exp_target, start_exporter
from tests.targets.agent_harness import target_env
from tests.targets.exp_procs import http_get, run
from tests.targets.exp_target import samples

WSGI_APP = Path(__file__).resolve().parents[1] / "targets" / "mw_wsgi_app.py"
OPENMETRICS_2 = "application/openmetrics-text; version=2.0.0"


def text_samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    status, content_type, body = http_get(url, fresh=True)
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4"), content_type
    return [(s.name, s.labels, s.value) for fam in parse_text(body) for s in fam.samples]


def test_buckets_per_decade_sets_the_classic_ladder(stack: ExitStack, sock_dir: str) -> None:
    app = start_exp_target(stack, sock_dir, "shop")
    assert app.cmd("samples latency 3 500") == "done 500"
    found = text_samples(start_exporter(stack, sock_dir, "--buckets-per-decade", "4") + "/metrics")
    les = sorted(float(lab["le"]) for n, lab, _ in found if n == "perftop_timing_histogram_seconds_bucket")
    assert les == [*ladder(4).bounds, math.inf]
    assert not [n for n, _, _ in found if n.startswith(NATIVE_FAMILY)]  # text 0.0.4 cannot carry them


def timing_names(samples: list[tuple[str, dict[str, str], float]]) -> set[str]:
    """The timings a scrape carries (each has exactly one `_count` sample in the summary family)."""
    return {lab["metric"] for n, lab, _ in samples if n == "perftop_timing_seconds_count"}


def bracketed_scrape(
    unlimited_url: str, budgeted_url: str
) -> tuple[list[tuple[str, dict[str, str], float]], list[tuple[str, dict[str, str], float]]]:
    """A scrape of the budgeted exporter between two of the unlimited one that carry the same timings:
    (the later unlimited scrape, the budgeted one). The agent times its own GC pauses (`gc.gen0`...), and
    serving a scrape can start a new one: a budget's arithmetic is only exact against the timings the
    agent had when the budgeted exporter collected."""
    for _ in range(5):
        before = timing_names(text_samples(unlimited_url))
        found = text_samples(budgeted_url)
        after = text_samples(unlimited_url)
        if timing_names(after) == before:
            return after, found
    raise AssertionError(f"the agent's timings kept changing between scrapes: {sorted(before)}")


def test_max_series_keeps_the_busiest_timings_and_counts_what_it_dropped(
    stack: ExitStack, sock_dir: str
) -> None:
    app = start_exp_target(stack, sock_dir, "shop")
    assert app.cmd("samples busy 1 300") == "done 300"
    assert app.cmd("samples quiet 2 20") == "done 20"
    unlimited_url = start_exporter(stack, sock_dir) + "/metrics"
    unlimited = text_samples(unlimited_url)
    per_timing = {
        metric: sum(1 for _, lab, _ in unlimited if lab.get("metric") == metric)
        for metric in timing_names(unlimited)
    }
    # Summary 5, classic buckets + _sum + _count, errors 1 (the native histogram is the +1 the budget
    # also counts, though the text format leaves it out). Besides busy and quiet, the agent's own GC
    # pause timings (fewer calls than quiet's 20) when a collection ran.
    assert set(per_timing) >= {"busy", "quiet"}
    assert set(per_timing.values()) == {ladder().series + 6}
    others = len(unlimited) - sum(per_timing.values())
    budget = others + ladder().series + 7 + 5  # room for one timing, not two
    budgeted_url = start_exporter(stack, sock_dir, "--max-series", str(budget)) + "/metrics"
    unlimited, found = bracketed_scrape(unlimited_url, budgeted_url)
    assert {lab["metric"] for _, lab, _ in found if "metric" in lab} == {"busy"}
    dropped = [v for n, _, v in found if n == "perftop_export_dropped_series"]
    assert dropped == [(ladder().series + 7) * (len(timing_names(unlimited)) - 1)]
    assert [v for n, _, v in unlimited if n == "perftop_export_dropped_series"] == [0.0]


def test_max_series_counts_what_each_timing_and_route_costs(stack: ExitStack, sock_dir: str) -> None:
    """A budget that only the host, process and agent families fit in: every timing and every route's
    histograms are left out, and the gauge counts exactly their series (a timing's native one too)."""
    app = subprocess.Popen(
        [sys.executable, str(WSGI_APP), sock_dir],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=target_env(),
    )
    stack.callback(app.wait, 20)
    stack.callback(app.kill)
    assert app.stdout is not None
    base = f"http://127.0.0.1:{int(app.stdout.readline())}"
    for path in ("/orders/1", "/orders/2", "/orders/3/items/4", "/reports/daily"):
        assert http_get(base + path)[0] == 200
    unlimited_url = start_exporter(stack, sock_dir) + "/metrics"
    unlimited = text_samples(unlimited_url)
    budgeted = ("perftop_timing_seconds", "perftop_timing_histogram_seconds", "perftop_timing_errors")
    budgeted += ("perftop_request_sql_seconds", "perftop_request_queries")
    suffixes = ("", "_count", "_sum", "_bucket", "_total")
    names = {family + suffix for family in budgeted for suffix in suffixes}
    pending = [s for s in unlimited if s[0] in names]
    timings = {lab["metric"] for n, lab, _ in pending if n == "perftop_timing_seconds_count"}
    routes = {lab["route"] for n, lab, _ in pending if n == "perftop_request_sql_seconds_count"}
    assert len(routes) >= 2 and len(timings) >= 2, (routes, timings)
    budget = str(len(unlimited) - len(pending))
    budgeted_url = start_exporter(stack, sock_dir, "--max-series", budget) + "/metrics"
    unlimited, found = bracketed_scrape(unlimited_url, budgeted_url)
    pending = [s for s in unlimited if s[0] in names]
    timings = timing_names(unlimited)
    assert not [s for s in found if s[0] in names]
    dropped = [v for n, _, v in found if n == "perftop_export_dropped_series"]
    assert dropped == [len(pending) + len(timings)]


def test_openmetrics_2_carries_native_histograms_with_the_sketchs_buckets(
    stack: ExitStack, sock_dir: str
) -> None:
    app = start_exp_target(stack, sock_dir, "shop")
    assert app.cmd("samples latency 5 2000") == "done 2000"
    url = start_exporter(stack, sock_dir) + "/metrics"
    status, content_type, body = http_get(url, accept=OPENMETRICS_2, fresh=True)
    assert status == 200 and content_type.startswith("application/openmetrics-text; version=2.0.0")
    families = {fam.name: fam for fam in parse_openmetrics(body)}
    fam = families[NATIVE_FAMILY]
    assert fam.type == "histogram"
    [sample] = [s for s in fam.samples if s.labels["metric"] == "latency"]
    native = sample.native_histogram
    assert native is not None
    assert (native.count_value, native.schema, native.zero_count) == (2000, 6, 0)
    assert native.sum_value == pytest.approx(sum(samples(5, 2000)) / 1000, rel=1e-9)
    # prometheus_client's parser drops spans with a negative offset (values under 1 s): read them here.
    line = next(
        raw for raw in body.splitlines() if raw.startswith(NATIVE_FAMILY) and 'metric="latency"' in raw
    )
    spans = re.search(r"positive_spans:\[([-\d:,]+)\]", line)
    assert spans is not None
    index, count, buckets = 0, 0, {}
    deltas = iter(native.pos_deltas or [])
    for n, span in enumerate(spans.group(1).split(",")):
        offset, length = (int(x) for x in span.split(":"))
        index = offset if n == 0 else index + offset
        for _ in range(length):
            count += next(deltas)
            if count:
                buckets[index] = count
            index += 1
    assert next(deltas, None) is None
    assert sum(buckets.values()) == 2000
    sketch = Sketch()
    for ms in samples(5, 2000):
        sketch.add(ms * 1e6)
    assert sorted(buckets.values()) == sorted(sketch.bins.values())
    per_bucket: dict[int, int] = {}
    for ms in samples(5, 2000):
        k = native_index(bucket_of(ms * 1e6))
        per_bucket[k] = per_bucket.get(k, 0) + 1
        assert BASE ** (k - 1) * (1 - ALPHA) <= ms / 1000 <= BASE**k * (1 + ALPHA)
    assert per_bucket == buckets
    # OpenMetrics 1.0 and the text format leave the native family out.
    _, _, om1 = http_get(url, accept="application/openmetrics-text; version=1.0.0")
    assert NATIVE_FAMILY not in om1
    assert NATIVE_FAMILY not in http_get(url)[2]


def test_bad_histogram_arguments_are_one_line_errors(sock_dir: str) -> None:
    for args, fragment in (
        (("--buckets-per-decade", "0"), "expected a positive whole number"),
        (("--buckets-per-decade", "41"), "expected at most 40"),
        (("--max-series", "-3"), "expected a whole number"),
        (("--max-series", "lots"), "expected a whole number"),
    ):
        result = run("export", "--socket-dir", sock_dir, *args)
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("perftop: ") and fragment in lines[0], result.stderr
