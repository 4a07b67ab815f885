"""perftop's fast text writers against prometheus_client's own, byte for byte, on a real collection: an
instrumented process with timings, counters, gauges, SQL and awkward names, the host and the process."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from prometheus_client.exposition import choose_encoder as library_encoder
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.samples import Exemplar, Sample

from perftop.export.prometheus.collector import HostCollector
from perftop.export.prometheus.families import NATIVE_FAMILY
from perftop.export.prometheus.server import choose_encoder
from perftop.export.text import faster, write_openmetrics, write_text
from tests.helpers import short_tmp_dir
from tests.targets.agent_harness import Target

SCRIPT = Path(__file__).resolve().parents[1] / "targets" / "exp_target.py"


class Frozen:
    """A registry of fixed families, as the exporter renders a collection."""

    def __init__(self, families: list[object]) -> None:
        self.families = families

    def collect(self) -> list[object]:
        return self.families


@pytest.fixture
def families() -> Iterator[list[object]]:
    """One real collection of a host with an instrumented process, plus families the fast path must
    hand to prometheus_client (exemplars, timestamps, `_created`, a gauge histogram...)."""
    with short_tmp_dir() as sockets, Target(sockets, 'shop "north"\\1', script=SCRIPT) as app:
        assert app.cmd("samples latency 3 800") == "done 800"
        assert app.cmd('samples we"ird\\name 4 30') == "done 30"
        assert app.cmd("work 40") == "done 40"
        assert app.cmd("count cache.hit 3") == "done"
        assert app.cmd("gauge queue.depth -0.0") == "done"
        assert app.cmd("sql t_a:5,t_b:2") == "done"
        collector = HostCollector(sockets)
        try:
            found = list(collector.collect())
        finally:
            collector.close()
    created = CounterMetricFamily("t_created_things", "with _created", labels=["a"], created=12.5)
    created.add_metric(["x"], 3.0, created=12.5)
    stamped = GaugeMetricFamily("t_stamped", "a timestamped sample")
    stamped.samples.append(Sample("t_stamped", {}, 1.5, timestamp=1700000000.25))
    exemplar = CounterMetricFamily("t_exemplar", "an exemplar", labels=["a"])
    exemplar.samples.append(
        Sample("t_exemplar_total", {"a": "b"}, 2.0, exemplar=Exemplar({"trace": "1"}, 0.5))
    )
    weird = GaugeMetricFamily("t_weird", 'help with \\ and "quotes"\nand lines', labels=["le"])
    weird.add_metric(['a\\b"c\nd\u00e9'], float("nan"))
    weird.add_metric(["inf"], float("inf"))
    weird.add_metric(["big"], 123456789.0)
    weird.add_metric(["neg"], -0.0)
    yield [*found, created, stamped, exemplar, weird]


def test_text_format_is_byte_for_byte_prometheus_clients(families: list[object]) -> None:
    registry = Frozen(families)
    assert write_text(registry) == generate_latest(registry)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["1.0.0", "2.0.0"])
def test_openmetrics_is_byte_for_byte_prometheus_clients(families: list[object], version: str) -> None:
    registry = Frozen(families)
    expected = openmetrics.generate_latest(registry, version=version)  # type: ignore[arg-type]
    assert write_openmetrics(registry, version) == expected  # type: ignore[arg-type]


def test_fast_writers_replace_only_the_default_escaping(families: list[object]) -> None:
    for accept, fast in (
        ("", write_text),
        ("text/plain; version=1.0.0", write_text),
        ("application/openmetrics-text; version=1.0.0", None),
    ):
        encoder, _ = library_encoder(accept)
        found = faster(encoder)
        if fast is not None:
            assert found is fast
        else:
            assert isinstance(found, partial) and found.func is write_openmetrics
    utf8 = "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8"
    assert faster(library_encoder(utf8)[0]) is None
    # The exporter's choice: the same bytes, the native histograms left out of the formats without them.
    classic = Frozen([fam for fam in families if getattr(fam, "name", "") != NATIVE_FAMILY])
    encoder, ctype = choose_encoder("")
    assert ctype.startswith("text/plain; version=0.0.4")
    assert encoder(Frozen(families)) == generate_latest(classic)  # type: ignore[arg-type]
    encoder, _ = choose_encoder("application/openmetrics-text; version=1.0.0")
    assert encoder(Frozen(families)) == openmetrics.generate_latest(classic)  # type: ignore[arg-type]
