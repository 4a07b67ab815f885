"""The agent's `stats` with dense bins (`"bins": "dense"`, what `perftop export` asks for): the same
sketches as the pairs every other viewer gets, which do not change."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from perftop.collectors.agent_client import AgentClient, RequestFailed
from perftop.export.prometheus import digest_sketch
from perftop.wire.protocol import unpack_counts
from perftop.wire.sketch import Sketch
from tests.helpers import short_tmp_dir
from tests.targets.agent_harness import Target


@pytest.fixture
def target() -> Iterator[Target]:
    with short_tmp_dir() as tmp, Target(os.path.join(tmp, "socks")) as t:
        yield t


def test_dense_bins_hold_the_sketches_of_the_pairs(target: Target) -> None:
    assert target.cmd("work 300") == "done 300"
    for ms in (1, 2, 3, 4, 100, 2500):
        assert target.cmd(f"observe upstream {ms}") == "done"
    with AgentClient(target.socket) as client:
        pairs = client.call("stats", {"window": None})
        dense = client.call("stats", {"window": None, "bins": "dense"})
        assert (
            client.call("stats", {"window": None, "bins": "pairs"})["timings"].keys()
            == pairs["timings"].keys()
        )
    assert set(dense) == set(pairs)
    assert dense["timings"].keys() == pairs["timings"].keys()
    for name, timing in pairs["timings"].items():
        sketch, other = timing["sketch"], dense["timings"][name]["sketch"]
        assert "bins" in sketch and "bins" not in other
        rebuilt = {k: v for k, v in other.items() if k not in ("lo", "counts")}
        rebuilt["bins"] = [[other["lo"] + k, n] for k, n in enumerate(other["counts"]) if n]
        assert Sketch.from_dict(rebuilt).bins == Sketch.from_dict(sketch).bins
        assert other["counts"][0] and other["counts"][-1]  # from the first populated bin to the last
        assert digest_sketch(other).buckets == digest_sketch(sketch).buckets


def test_a_bad_bins_parameter_is_refused_and_the_connection_survives(target: Target) -> None:
    with AgentClient(target.socket) as client:
        for value in ("sparse", 1, ["dense"]):
            with pytest.raises(RequestFailed, match="'bins' must be"):
                client.call("stats", {"bins": value})
        assert client.call("info")["pid"] == target.pid


def test_packed_counts_are_the_dense_counts(target: Target) -> None:
    """`"packed": true` sends each timing's dense counts as base64 of the narrowest unsigned integers;
    unpacked, they are the dense list, and the rest of the sketch is the same."""
    assert target.cmd("work 300") == "done 300"
    for ms in (1, 2, 3, 4, 100, 2500):
        assert target.cmd(f"observe upstream {ms}") == "done"
    with AgentClient(target.socket) as client:
        dense = client.call("stats", {"window": None, "bins": "dense"})
        packed = client.call("stats", {"window": None, "bins": "dense", "packed": True})
        unpacked_too = client.call("stats", {"window": None, "bins": "dense", "packed": False})
    assert packed["timings"].keys() == dense["timings"].keys() == unpacked_too["timings"].keys()
    assert {"work", "upstream"} <= packed["timings"].keys()
    for name, timing in dense["timings"].items():
        sketch, other = timing["sketch"], packed["timings"][name]["sketch"]
        assert isinstance(other["counts"], str) and other["width"] in (1, 2, 4, 8)
        assert unpack_counts(other["width"], other["counts"]) == sketch["counts"]
        assert {k: v for k, v in other.items() if k not in ("counts", "width")} == {
            k: v for k, v in sketch.items() if k != "counts"
        }
        assert isinstance(unpacked_too["timings"][name]["sketch"]["counts"], list)


def test_a_bad_packed_parameter_is_refused_and_the_connection_survives(target: Target) -> None:
    with AgentClient(target.socket) as client:
        for value in ("yes", 1, [True]):
            with pytest.raises(RequestFailed, match="'packed' must be"):
                client.call("stats", {"bins": "dense", "packed": value})
        assert client.call("info")["pid"] == target.pid
