"""The viewer's data flow from the agents' `stats` to the panes' rows: each timing sketch a worker sends is
decoded once per tick and never re-encoded to be merged; the rows carry every figure the panes show."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from perftop.collectors.agent_client import merge_stats, timing_rows
from perftop.collectors.agent_view import build_view
from perftop.collectors.rows import TimingRow, view_rows
from perftop.tui.screens.metric_detail import histogram_text
from perftop.wire.sketch import Sketch

WORKERS = (301, 302, 303)
METRICS = {
    "http GET /orders/{id}": (301, 302, 303),
    "checkout": (301, 303),
    "gc.gen0": (302,),
}


def sketch_of(values: list[float], errors: int = 0) -> Sketch:
    sk = Sketch()
    for i, v in enumerate(values):
        sk.add(v, errors=1 if i < errors else 0)
    return sk


def worker_stats(pid: int) -> dict[str, Any]:
    timings = {
        name: {
            "sketch": sketch_of(
                [1e6 * (pid % 10 + k % 7) for k in range(50 + pid % 5)], errors=pid % 3
            ).to_dict(),
            "errors_by_type": {"ValueError": pid % 3} if pid % 3 else {},
        }
        for name, pids in METRICS.items()
        if pid in pids
    }
    return {"now": 1000.0 + pid, "window_s": None, "span_s": 10.0 + pid % 4, "timings": timings}


def test_each_timing_sketch_is_decoded_once_per_tick_and_never_re_encoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    results = {pid: worker_stats(pid) for pid in WORKERS}
    infos = {pid: {"pid": pid, "name": "shop"} for pid in WORKERS}
    expected_timings = timing_rows(merge_stats([results[p] for p in WORKERS]))  # the figures before
    sent = sum(len(s["timings"]) for s in results.values())

    decoded: Counter[int] = Counter()
    encoded: list[int] = []
    from_dict, to_dict = Sketch.from_dict, Sketch.to_dict

    def counting_from_dict(cls: type[Sketch], data: Any) -> Sketch:
        decoded[id(data)] += 1
        return from_dict(data)

    def counting_to_dict(self: Sketch) -> dict[str, Any]:
        encoded.append(id(self))
        return to_dict(self)

    monkeypatch.setattr(Sketch, "from_dict", classmethod(counting_from_dict))
    monkeypatch.setattr(Sketch, "to_dict", counting_to_dict)

    view = build_view(results, infos, None, WORKERS[0])  # one tick: the sampler's thread...
    rows = view_rows(view)
    view.to_json()  # ...`snapshot --json` and recordings
    for name in view.sketches:  # ...and the detail screen's histogram
        histogram_text(view.sketches[name])

    assert sum(decoded.values()) == sent
    assert set(decoded.values()) == {1}
    assert encoded == []
    assert view.timings == expected_timings
    merged = {row.name: row for row in rows.timings}
    assert merged["checkout"].count == sum(50 + pid % 5 for pid in (301, 303))
    assert [row.pid for row in rows.workers["checkout"]] == [301, 303]
    assert view.figures[302].requests == 50 + 302 % 5


def test_rows_carry_the_error_percent_and_the_workers_rows() -> None:
    results = {pid: worker_stats(pid) for pid in WORKERS}
    view = build_view(results, {pid: {"pid": pid} for pid in WORKERS}, None, WORKERS[0])
    rows = view_rows(view)
    checkout = next(row for row in rows.timings if row.name == "checkout")
    assert checkout.errors == 301 % 3 + 303 % 3
    assert checkout.error_percent == pytest.approx(100.0 * checkout.errors / checkout.count)
    assert checkout["p99_ms"] == checkout.p99_ms == view.timings["checkout"]["p99_ms"]
    worker = rows.workers["checkout"][0]
    assert (worker.label, worker.key) == ("  └ pid 301", "w:301:checkout")
    assert worker.count == view.per_pid[301]["checkout"]["count"]
    assert rows.queries is None  # no SQL recorded


def test_a_row_from_partial_or_malformed_json_shows_dashes() -> None:
    row = TimingRow.from_json("x", {"count": 0, "p99_ms": float("nan"), "max_ms": "7"})
    assert (row.count, row.error_percent, row.p99_ms, row.max_ms) == (0, 0.0, None, None)
