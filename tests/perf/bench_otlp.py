"""What one OTLP push of `perftop export --otlp` costs on a host with 20 agents x 100 timings.

Starts 20 real instrumented processes (tests/targets/exp_target.py), each with 100 timings of 2,000
lognormal samples, then, in this process, does what the exporter's two threads do, timing each step
separately: a collection (HostCollector.collect with the agents' stats), its translation into OTLP point
data (exponential histograms from the sketches), and the push (protobuf encoding, gzip as the exporter
does by default, and a POST to a local OTLP/HTTP receiver that reads the body). Also reports the size.

Run: .venv/bin/python tests/perf/bench_otlp.py [--agents 20] [--metrics 100] [--pushes 10]
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics  # noqa: E402
from opentelemetry.exporter.otlp.proto.http import Compression  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter  # noqa: E402
from opentelemetry.sdk.metrics.export import MetricExportResult  # noqa: E402

from perftop.export.otlp import Translator  # noqa: E402
from perftop.export.prometheus import HostCollector  # noqa: E402
from tests.perf._common import metric_agents  # noqa: E402


class _Sink(BaseHTTPRequestHandler):
    """Reads the request's body whole and answers 200, as a Collector's receiver would."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--metrics", type=int, default=100)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--pushes", type=int, default=10)
    args = parser.parse_args()
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    exporter = OTLPMetricExporter(
        endpoint=f"http://127.0.0.1:{receiver.server_address[1]}/v1/metrics", compression=Compression.Gzip
    )
    with tempfile.TemporaryDirectory(prefix="perftop-bench-otlp-") as sockets:
        try:
            with metric_agents(sockets, args.agents, args.metrics, args.samples):
                collector = HostCollector(sockets)
                translator = Translator("bench", time.time())
                collect_s, translate_s, push_s, sizes, histograms = [], [], [], [], []
                for _ in range(args.pushes):
                    stats: dict[int, dict[str, Any]] = {}
                    t0 = time.perf_counter()
                    families = collector.collect(agent_stats=stats)
                    t1 = time.perf_counter()
                    data = translator.translate(families, stats, time.time())
                    t2 = time.perf_counter()
                    assert exporter.export(data) == MetricExportResult.SUCCESS
                    t3 = time.perf_counter()
                    collect_s.append(t1 - t0)
                    translate_s.append(t2 - t1)
                    push_s.append(t3 - t2)
                    raw = encode_metrics(data).SerializeToString()
                    sizes.append((len(raw), len(gzip.compress(raw))))
                    histograms.append(
                        sum(
                            len(m.data.data_points)
                            for rm in data.resource_metrics
                            for sm in rm.scope_metrics
                            for m in sm.metrics
                            if type(m.data).__name__ == "ExponentialHistogram"
                        )
                    )
                collector.close()
        finally:
            exporter.shutdown()
            receiver.shutdown()

    def ms(values: list[float]) -> str:
        low, mid, high = (1000 * f(values) for f in (min, statistics.median, max))
        return f"median {mid:.0f} ms (min {low:.0f}, max {high:.0f})"

    sys.stdout.write(
        f"{args.agents} agents x {args.metrics} timings, {args.pushes} pushes, "
        f"{histograms[-1]} exponential histograms\n"
        f"collect (HostCollector, with the agents' stats): {ms(collect_s)}\n"
        f"translate to OTLP point data:                    {ms(translate_s)}\n"
        f"push (protobuf encoding, gzip, POST, 200):       {ms(push_s)}\n"
        f"request size: {statistics.median(r for r, _ in sizes) / 1e6:.2f} MB of protobuf, "
        f"{statistics.median(z for _, z in sizes) / 1e6:.2f} MB gzipped\n"
    )


if __name__ == "__main__":
    main()
