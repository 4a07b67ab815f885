"""How long a scrape of `perftop export` takes on a host with 20 agents x 100 timings (goal: <= 100 ms).

Starts 20 real instrumented processes (tests/targets/exp_target.py), each with 100 timings of 2,000
lognormal samples (a few hundred sketch bins each, like a real latency distribution), then `perftop export`
on a free loopback port, and times whole scrapes over HTTP (request to last byte), in the Prometheus text
format, OpenMetrics 1.0, OpenMetrics 2.0 (with native histograms) and Prometheus' protobuf (with native
histograms, what Prometheus asks for with `--enable-feature=native-histograms`), in each `--refresh` mode:
0 (collect on each scrape), auto (the default: collect ahead of each scrape, paced by the scrapes) and 5
(every 5 s in the background). Also reports the exporter's own collection time (the rest of a scrape made
on request is rendering), the exporter's CPU time per scrape (user + system, from /proc: what a loaded
machine inflates least), how many answers were made ahead, the samples (text lines) and the bytes of a
scrape, raw and gzipped (Prometheus asks for gzip).

Run: .venv/bin/python tests/perf/bench_export.py [--agents 20] [--metrics 100] [--scrapes 10]
"""

from __future__ import annotations

import argparse
import gzip
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "tests" / "targets" / "exp_target.py"
CLI = ROOT / "tests" / "targets" / "exp_cli.py"


FORMATS = (
    ("text", None),
    ("OpenMetrics", "application/openmetrics-text; version=1.0.0"),
    ("OM2", "application/openmetrics-text; version=2.0.0"),
    (
        "protobuf",
        "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,"
        "application/openmetrics-text;version=1.0.0;q=0.8,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    ),
)
"""The formats timed: the name --formats selects them by, and the Accept header that asks for it."""


def collect_seconds(body: bytes, label: str) -> float:
    """The exporter's `perftop_export_collect_seconds` in a scrape's body. In protobuf it is the last
    family, whose message ends with the gauge's value (a little-endian double)."""
    if label == "protobuf":
        assert b"perftop_export_collect_seconds" in body[-200:]
        value: float = struct.unpack("<d", body[-8:])[0]
        return value
    found = re.search(rb"\nperftop_export_collect_seconds (\S+)", body)
    assert found is not None
    return float(found.group(1))


def scrape(port: int, accept: str | None) -> tuple[float, bytes, bool]:
    """(seconds from request to last byte, body, answered from a collection made ahead)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if accept:
        request.add_header("Accept", accept)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        body: bytes = response.read()
        ahead = response.headers.get("X-Perftop-Rendered") == "ahead"
    return time.perf_counter() - started, body, ahead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--metrics", type=int, default=100)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--scrapes", type=int, default=10)
    parser.add_argument(
        "--every", type=float, default=5.0, help="seconds from one scrape's start to the next, as Prometheus"
    )
    parser.add_argument("--modes", default="0,auto,5", help="the --refresh values to time, comma-separated")
    parser.add_argument(
        "--formats", default="text,OpenMetrics,OM2,protobuf", help="the formats to time, comma-separated"
    )
    parser.add_argument("--export-args", default="", help="more `perftop export` arguments, space-separated")
    args = parser.parse_args()
    procs: list[subprocess.Popen[str]] = []
    with tempfile.TemporaryDirectory(prefix="perftop-bench-export-") as sockets:
        try:
            for i in range(args.agents):
                proc = subprocess.Popen(
                    [sys.executable, str(TARGET), sockets, f"bench{i:02d}"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                procs.append(proc)
            for proc in procs:
                assert proc.stdout is not None and proc.stdin is not None
                assert proc.stdout.readline().startswith("ready")
                proc.stdin.write(f"metrics {args.metrics} {args.samples}\n")
                proc.stdin.flush()
            for proc in procs:
                assert proc.stdout is not None
                assert proc.stdout.readline().startswith("done")
            for refresh in args.modes.split(","):
                for label, accept in FORMATS:
                    if label not in args.formats.split(","):
                        continue
                    # An exporter of its own per format: a collection renders every format asked so far.
                    exporter = subprocess.Popen(
                        [
                            sys.executable,
                            str(CLI),
                            "export",
                            "--listen",
                            "127.0.0.1:0",
                            "--socket-dir",
                            sockets,
                            "--refresh",
                            refresh,
                            *args.export_args.split(),
                        ],
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                    procs.append(exporter)
                    run(exporter, args, f"--refresh {refresh}", label, accept)
                    exporter.kill()
                    exporter.wait()
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


def run(
    exporter: subprocess.Popen[str], args: argparse.Namespace, mode: str, label: str, accept: str | None
) -> None:
    """Time scrapes of one running exporter in one format and print one line.

    Scrapes start every --every seconds, as Prometheus makes them (a slow answer does not delay the next).
    """
    assert exporter.stderr is not None
    match = None
    while match is None:
        line = exporter.stderr.readline()
        if not line:
            raise SystemExit("the exporter did not start")
        match = re.search(r":(\d+)/metrics", line)
    port = int(match.group(1))
    process = psutil.Process(exporter.pid)
    scrape(port, accept)  # warm up: connections to the agents, CPU baselines, the format asked for
    times: list[float] = []
    collect: list[float] = []
    cpu: list[float] = []
    body = b""
    ahead = 0
    start = time.monotonic() + args.every
    for k in range(args.scrapes):
        time.sleep(max(0.0, start + k * args.every - time.monotonic()))
        before = process.cpu_times()
        elapsed, body, was_ahead = scrape(port, accept)
        after = process.cpu_times()
        cpu.append(after.user + after.system - before.user - before.system)
        times.append(elapsed)
        ahead += was_ahead
        collect.append(collect_seconds(body, label))
    lines = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    times.sort()
    sys.stdout.write(
        f"{mode:12} {label:12} {args.agents} agents x {args.metrics} timings: scrape median "
        f"{statistics.median(times) * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms; collection "
        f"median {statistics.median(collect) * 1000:.0f} ms; exporter CPU per scrape median "
        f"{statistics.median(cpu) * 1000:.0f} ms; {ahead}/{len(times)} made ahead; "
        f"{'' if label == 'protobuf' else f'{lines} samples, '}{len(body) / 1e6:.2f} MB "
        f"({len(gzip.compress(body, 1)) / 1e6:.2f} MB gzipped)\n"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
