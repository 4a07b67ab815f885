"""`perftop export`'s Prometheus side: families.py turns the agents' data into metric families,
collector.py collects this host (agents, system, processes) into them, server.py serves and schedules
the scrapes. The names below are the package's public ones (the export command, the OTLP pusher and the
tests use them)."""

from perftop.export.prometheus.collector import DEFAULT_MAX_QUERIES, HostCollector
from perftop.export.prometheus.families import (
    BUCKETS_S,
    NATIVE_FAMILY,
    QUANTILES,
    TimingDigest,
    count_buckets,
    digest_sketch,
)
from perftop.export.prometheus.server import DEFAULT_LISTEN, MetricsServer, Prerenderer, choose_encoder

__all__ = [
    "BUCKETS_S",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_QUERIES",
    "NATIVE_FAMILY",
    "QUANTILES",
    "HostCollector",
    "MetricsServer",
    "Prerenderer",
    "TimingDigest",
    "choose_encoder",
    "count_buckets",
    "digest_sketch",
]
