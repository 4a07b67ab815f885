"""CPU of one `perftop export` collection on a host with 20 agents x 100 timings, this tree's code against
the code before the export redesign (commit 67f12bc), in one run; with --http, scrape times over HTTP.

Starts 20 real instrumented processes (tests/targets/exp_target.py), each with 100 timings of 2,000
lognormal samples (a few hundred sketch bins each, like a real latency distribution). Then, for each
code (the old tree extracted with `git archive 67f12bc perftop` into a temporary directory, and this
one), a subprocess with that tree first on PYTHONPATH makes a HostCollector on those agents and times
collections: CPU (user + system, all threads: `time.process_time`) of `collect()` and of rendering it,
a collection per format (none shares another's work), in each format asked (Prometheus text,
OpenMetrics 1.0, OpenMetrics 2.0 with native histograms, protobuf). The old and the new code
alternate, --rounds times, and the medians are compared: the ratio new/old is the figure of the
redesign (goal <= 0.1). Also printed: the bytes and samples (text lines) of a scrape, and whether the
lines of the benchmark's timings (`m000`...) in the text format are the same, byte for byte, from both
codes (the agents are idle; their own `gc.*` timings and GC counts do change).

With --http, as before the redesign: `perftop export` on a free loopback port, whole scrapes timed over
HTTP (request to last byte) in each format and each `--refresh` mode (0: collect on each scrape; auto,
the default: collect ahead of each scrape, paced by the scrapes; 5: every 5 s in the background), with
the exporter's own collection time, its CPU per scrape (from /proc), how many answers were made ahead,
and the size of a scrape, raw and gzipped.

Run: .venv/bin/python tests/perf/bench_export.py [--agents 20] [--metrics 100] [--rounds 3] [--http]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

# Appended, not first: the --measure runs find the perftop of the tree PYTHONPATH names first.
sys.path.append(str(Path(__file__).resolve().parents[2]))
from tests.perf._common import metric_agents

ROOT = Path(__file__).resolve().parents[2]
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


OLD_COMMIT = "67f12bc"
"""The last commit before the export redesign: its collection is what the ratio compares against."""


class Frozen:
    """A registry of the families of one collection, for rendering them."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


def measure(sockets: str, collections: int, formats: list[str]) -> None:
    """In the subprocess: with the perftop first on the path, time `collections` collections of the
    agents in `sockets` per format of `formats`, each rendered in that format only (so that no format
    is spared work another one did on the same collection); print one JSON line."""
    import perftop
    from perftop.export.prometheus import HostCollector, choose_encoder

    collector = HostCollector(sockets)
    encoders = {label: choose_encoder(accept or "")[0] for label, accept in FORMATS if label in formats}
    try:
        for encode in encoders.values():  # warm up: connections to the agents, CPU baselines, caches
            encode(Frozen(list(collector.collect())))
        collect_cpu: dict[str, list[float]] = {label: [] for label in encoders}
        render_cpu: dict[str, list[float]] = {label: [] for label in encoders}
        bodies: dict[str, bytes] = {}
        for _ in range(collections):
            for label, encode in encoders.items():
                started = time.process_time()
                families = list(collector.collect())
                collected = time.process_time()
                bodies[label] = encode(Frozen(families))
                render_cpu[label].append(time.process_time() - collected)
                collect_cpu[label].append(collected - started)
                del families
    finally:
        collector.close()
    result = {
        "perftop": perftop.__file__,
        "collect": collect_cpu,
        "render": render_cpu,
        "bytes": {label: len(body) for label, body in bodies.items()},
        "samples": {
            label: sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
            for label, body in bodies.items()
            if label != "protobuf"
        },
        "timing_lines": hashlib.sha256(
            b"".join(line for line in bodies.get("text", b"").splitlines() if b'metric="m' in line)
        ).hexdigest(),
    }
    sys.stdout.write(json.dumps(result) + "\n")


def compare(args: argparse.Namespace, sockets: str) -> None:
    """Old code against new on the same agents, alternating, and print the figures and the ratios."""
    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory(prefix="perftop-bench-old-") as old_tree:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", OLD_COMMIT, "perftop"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", old_tree], input=archive, check=True)
        trees = {"old": old_tree, "new": str(ROOT)}
        runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
        for _ in range(args.rounds):
            for code, tree in trees.items():
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--measure",
                        sockets,
                        "--collections",
                        str(args.collections),
                        "--formats",
                        args.formats,
                    ],
                    env={**os.environ, "PYTHONPATH": tree},
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                run = json.loads(out.strip().splitlines()[-1])
                assert run["perftop"].startswith(tree), (run["perftop"], tree)
                runs[code].append(run)
    sys.stdout.write(
        f"{args.agents} agents x {args.metrics} timings x {args.samples} samples; {args.rounds} rounds of "
        f"{args.collections} collections per code, alternating; CPU medians (all threads)\n"
    )
    collect = {
        code: statistics.median(x for r in rs for xs in r["collect"].values() for x in xs)
        for code, rs in runs.items()
    }
    sys.stdout.write(
        f"  collect()            old {collect['old'] * 1000:6.0f} ms  new {collect['new'] * 1000:6.0f} ms  "
        f"ratio {collect['new'] / collect['old']:.3f}\n"
    )
    for label in formats:
        total = {
            code: statistics.median(
                c + r for run in rs for c, r in zip(run["collect"][label], run["render"][label], strict=True)
            )
            for code, rs in runs.items()
        }
        last = {code: rs[-1] for code, rs in runs.items()}
        size = ", ".join(
            f"{code} {last[code]['bytes'][label] / 1e6:.2f} MB"
            + (f" {last[code]['samples'][label]} samples" if label in last[code]["samples"] else "")
            for code in runs
        )
        sys.stdout.write(
            f"  collect + {label:11} old {total['old'] * 1000:6.0f} ms  new {total['new'] * 1000:6.0f} ms  "
            f"ratio {total['new'] / total['old']:.3f}   ({size})\n"
        )
    if "text" in formats:
        same = {r["timing_lines"] for rs in runs.values() for r in rs}
        sys.stdout.write(
            f"  lines of the timings m000... in the text format identical, old and new: {len(same) == 1}\n"
        )
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--metrics", type=int, default=100)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="old/new alternations")
    parser.add_argument("--collections", type=int, default=3, help="collections timed per round and code")
    parser.add_argument("--measure", metavar="SOCKETS", help=argparse.SUPPRESS)
    parser.add_argument("--http", action="store_true", help="also time scrapes over HTTP, as before")
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
    if args.measure:
        measure(args.measure, args.collections, args.formats.split(","))
        return
    with (
        tempfile.TemporaryDirectory(prefix="perftop-bench-export-") as sockets,
        metric_agents(sockets, args.agents, args.metrics, args.samples) as procs,
    ):
        compare(args, sockets)
        if args.http:
            http(args, sockets, procs)


def http(args: argparse.Namespace, sockets: str, procs: list[subprocess.Popen[str]]) -> None:
    """Scrapes over HTTP of `perftop export` (this tree's), each format in each --refresh mode."""
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
