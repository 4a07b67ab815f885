"""`perftop export`: a Prometheus scrape endpoint (and, with --otlp, an OTLP push) for this host's agents,
system and processes."""

from __future__ import annotations

import argparse
from typing import Any

from perftop.commands._args import (
    fail,
    is_loopback,
    non_negative_int,
    parse_listen,
    parse_pid,
    parse_seconds,
    positive_int,
    say,
)
from perftop.export.histograms import DEFAULT_PER_DECADE, MAX_PER_DECADE
from perftop.export.otlp import DEFAULT_INTERVAL_S
from perftop.export.prometheus.collector import DEFAULT_MAX_QUERIES, HostCollector
from perftop.export.prometheus.server import DEFAULT_LISTEN, MetricsServer


def _per_decade(text: str) -> int:
    """An argparse type: classic buckets per decade, 1 to MAX_PER_DECADE."""
    value = positive_int(text)
    if value > MAX_PER_DECADE:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_PER_DECADE}, not {value}")
    return value


def _refresh(text: str) -> float | None:
    """`--refresh`: 'auto' -> 0.0 (paced by the scrapes), 0 -> None (on each scrape), S -> S."""
    if text == "auto":
        return 0.0
    return parse_seconds(text, 0, 3600, "auto or a number of seconds") or None


def add_export_parser(sub: Any) -> None:
    """Register `perftop export` on the CLI's subparsers."""
    p = sub.add_parser(
        "export",
        help="Prometheus scrape endpoint for this host's agents, system and processes",
        description="Serve /metrics (Prometheus text format, OpenMetrics or protobuf) and /healthz. Every "
        "scrape samples the host, every process with an agent in the socket directory and every --pid "
        "process, and exports each timing as a summary, as a histogram on a fixed log-spaced ladder "
        "and, to scrapers that negotiate Prometheus' protobuf or OpenMetrics 2.0, as a native histogram.",
    )
    p.add_argument(
        "--listen", metavar="HOST:PORT", help=f"default {DEFAULT_LISTEN} (none with --otlp, unless given)"
    )
    p.add_argument(
        "--pid",
        type=parse_pid,
        action="append",
        default=[],
        dest="export_pids",
        metavar="PID",
        help="also export this process (repeatable), agent or not",
    )
    p.add_argument(
        "--max-queries",
        type=positive_int,
        default=DEFAULT_MAX_QUERIES,
        metavar="N",
        help=f"query fingerprints per agent, top N by total time (default {DEFAULT_MAX_QUERIES})",
    )
    p.add_argument(
        "--buckets-per-decade",
        type=_per_decade,
        default=DEFAULT_PER_DECADE,
        metavar="N",
        help=f"classic histogram buckets per power of ten, 100 µs to 100 s (1..{MAX_PER_DECADE}, default "
        f"{DEFAULT_PER_DECADE}: histogram_quantile() within 7%% of perftop's own quantiles)",
    )
    p.add_argument(
        "--max-series",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="series budget of a scrape: past it, whole timings and routes are left out, least busy "
        "first, and counted in perftop_export_dropped_series (default 0: no budget)",
    )
    p.add_argument(
        "--refresh",
        type=_refresh,
        default="auto",
        metavar="S",
        help="auto (default): collect ahead of each scrape, timed by the scrapes so far, and answer from "
        "that; S seconds: collect in the background every S seconds; 0: collect for each scrape (at most"
        " once a second, shared by the scrapes that arrive meanwhile)",
    )
    p.add_argument("--socket-dir", metavar="DIR", help="where agents' sockets are (default as the agent's)")
    add_otlp_arguments(p)


def run_export(args: argparse.Namespace) -> int:
    """`perftop export`: serve (and, with --otlp, push) until interrupted. One-line `perftop: ` errors,
    exit 2 for bad input."""
    from perftop.export.otlp import OtlpPusher, OtlpUnavailable, metrics_endpoint

    otlp_url: str | None = getattr(args, "otlp", None)
    listen: str | None = args.listen or (None if otlp_url else DEFAULT_LISTEN)
    try:
        host, port = parse_listen(listen) if listen else ("", 0)
        endpoint = metrics_endpoint(otlp_url) if otlp_url else None
    except ValueError as exc:
        return fail(str(exc), 2)
    from perftop.collectors.errors import CollectorError
    from perftop.collectors.process import check_pid

    pids: list[int] = list(getattr(args, "export_pids", []) or [])
    for pid in pids:
        try:
            check_pid(pid)
        except CollectorError as exc:
            return fail(str(exc), 2)
    collector = HostCollector(
        args.socket_dir,
        pids,
        args.max_queries,
        getattr(args, "buckets_per_decade", DEFAULT_PER_DECADE),
        getattr(args, "max_series", 0),
    )
    try:
        pusher = OtlpPusher(collector, endpoint, args.otlp_interval) if endpoint else None
    except OtlpUnavailable as exc:
        collector.close()
        return fail(str(exc), 2)
    server: MetricsServer | None = None
    if listen:
        try:
            server = MetricsServer((host, port), collector, getattr(args, "refresh", 0.0))
        except OSError as exc:
            collector.close()
            return fail(f"cannot listen on {listen}: {exc.strerror or exc}", 2)
        if not is_loopback(host):
            say(
                f"warning: serving metrics on {host}, reachable from other machines"
                " (metric names, command names and SQL fingerprints are visible to anyone who can connect)"
            )
        bound = server.server_address
        say(f"exporting on http://{listen.rsplit(':', 1)[0]}:{bound[1]}/metrics")
    if pusher is not None:
        say(f"pushing OTLP to {endpoint} every {pusher.interval_s:g} s")
        pusher.start()
    try:
        if server is not None:
            server.serve_forever()
        elif pusher is not None:
            pusher.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if pusher is not None:
            pusher.stop()
        if server is not None:
            server.server_close()
        collector.close()
    return 0


def add_otlp_arguments(parser: argparse.ArgumentParser) -> None:
    """`--otlp URL` and `--otlp-interval S` on `perftop export`."""
    parser.add_argument(
        "--otlp",
        metavar="URL",
        help="also push the metrics over OTLP/HTTP to URL (an OpenTelemetry Collector, e.g. "
        "http://127.0.0.1:4318; /v1/metrics is added); without --listen, serve no scrape endpoint",
    )
    parser.add_argument(
        "--otlp-interval",
        type=_interval,
        default=DEFAULT_INTERVAL_S,
        metavar="S",
        help=f"seconds between OTLP pushes (default {DEFAULT_INTERVAL_S:g})",
    )


def _interval(text: str) -> float:
    """An argparse type: seconds between OTLP pushes, 0.1 s to an hour."""
    return parse_seconds(text, 0.1, 3600)
