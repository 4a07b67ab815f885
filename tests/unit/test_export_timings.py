"""The timing families written straight from their rows (export/prometheus/timings.py) give the bytes
prometheus_client's writers and the generic protobuf encoder give for the same families as samples."""

from __future__ import annotations

import random
from typing import Any

import pytest
from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from perftop.export import protobuf
from perftop.export.histograms import ladder
from perftop.export.prometheus.families import Families, digest_sketch
from perftop.export.prometheus.timings import timing_rows
from perftop.export.text import write_openmetrics, write_text
from perftop.wire.sketch import Sketch


class Frozen:
    """A registry of fixed families."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


def as_samples(fam: Any) -> Metric:
    """The same family as a plain prometheus_client one, holding its samples."""
    plain = Metric(fam.name, fam.documentation, fam.type)
    plain.samples = list(fam.samples)
    return plain


def sketch(seed: int, n: int) -> dict[str, Any]:
    rng = random.Random(seed)
    sk = Sketch()
    for _ in range(n):
        sk.add(rng.lognormvariate(16.0, 1.5))  # ns: a median of about 9 ms
    if n:
        sk.add(0.0)
    return sk.to_dict()


@pytest.fixture(params=[4, 10])
def families(request: pytest.FixtureRequest) -> list[Any]:
    """The four timing families of a few timings, some with awkward names, one empty, one huge."""
    lad = ladder(request.param)
    fams = Families()
    names = ["api.checkout", 'we"ird\\name\nx', "émoji ☃", "empty"]
    for k, metric in enumerate(names):
        d = digest_sketch(sketch(k, 0 if metric == "empty" else 300 * (k + 1)), lad, native=True)
        timing_rows(fams, lad)(('shop "north"', str(1000 + k), metric, d))
    big = Sketch()  # counts past a million: written with an exponent, as Go does
    for value in range(1, 3_000_000, 701):
        big.add(float(value), n=500, errors=1)
    timing_rows(fams, lad)(("big", "7", "big", digest_sketch(big.to_dict(), lad, native=True)))
    return list(fams)


def test_four_families_in_the_order_of_the_first_timing(families: list[Any]) -> None:
    assert [fam.name for fam in families] == [
        "perftop_timing_seconds",
        "perftop_timing_histogram_seconds",
        "perftop_timing_native_seconds",
        "perftop_timing_errors",
    ]


def test_text_and_openmetrics_are_prometheus_clients_bytes(families: list[Any]) -> None:
    plain = [as_samples(fam) for fam in families]
    text_families = [fam for fam in families if fam.name != "perftop_timing_native_seconds"]
    text_plain = [fam for fam in plain if fam.name != "perftop_timing_native_seconds"]
    assert write_text(Frozen(text_families)) == generate_latest(Frozen(text_plain))  # type: ignore[arg-type]
    for version, mine, theirs in (
        ("1.0.0", text_families, text_plain),
        ("2.0.0", families, plain),
    ):
        expected = openmetrics.generate_latest(Frozen(theirs), version=version)  # type: ignore[arg-type]
        assert write_openmetrics(Frozen(mine), version) == expected  # type: ignore[arg-type]


def test_protobuf_is_the_generic_encoders_bytes(families: list[Any]) -> None:
    for fam in families:
        assert protobuf.encode_family(fam) == protobuf.encode_family(as_samples(fam)), fam.name


def test_samples_follow_rows_added_later(families: list[Any]) -> None:
    summary = families[0]
    before = len(summary.samples)
    summary.rows.append(summary.rows[0])
    assert len(summary.samples) == before + 5
