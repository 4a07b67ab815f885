"""The viewer's data flow from the agents' `stats` to the panes' rows: each timing and query sketch a worker
sends is decoded once per tick and never re-encoded to be merged; replay's window is computed from the
recorded sketches without encoding or decoding any; the rows carry every figure the panes show."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from perftop.collectors.agent_client import merge_stats, timing_rows
from perftop.collectors.agent_view import AgentView, build_view
from perftop.collectors.rows import TimingRow, view_rows
from perftop.recording.frames import agent_over_window, sketch_difference
from perftop.tui.screens.metric_detail import histogram_text
from perftop.wire.sketch import Sketch

WORKERS = (301, 302, 303)
METRICS = {
    "http GET /orders/{id}": (301, 302, 303),
    "checkout": (301, 303),
    "gc.gen0": (302,),
}
QUERIES = {
    "SELECT * FROM orders WHERE id = ?": (301, 302, 303),
    "UPDATE stock SET n = n - ? WHERE sku = ?": (302, 303),
    "INSERT INTO audit VALUES (?)": (301,),
}


def sketch_of(values: list[float], errors: int = 0) -> Sketch:
    sk = Sketch()
    for i, v in enumerate(values):
        sk.add(v, errors=1 if i < errors else 0)
    return sk


def query_stats(pid: int) -> dict[str, Any]:
    """A worker's `queries` (the SQL hook's `query_stats`): the fields `merge_queries` reads."""
    rows = []
    for n, (fp, pids) in enumerate(QUERIES.items()):
        if pid in pids:
            sk = sketch_of([1e5 * (n + 1) * (1 + (pid + k) % 11) for k in range(20 + pid % 7)])
            rows.append(
                {
                    "fingerprint": fp,
                    "dialect": "sqlite",
                    "count": sk.count,
                    "rows": sk.count,
                    "rows_counted": sk.count,
                    "routes": [f"GET /r{pid}"],
                    "n_plus_one": pid == 302,
                    "sketch": sk.to_dict(),
                }
            )
    return {"queries": rows, "slow_queries": [], "pool": None, "overflow": {}, "slow_ms": 100.0}


def worker_stats(pid: int, sql: bool = False, calls: int = 50) -> dict[str, Any]:
    """One worker's since-start `stats`: `calls` (plus a few) calls of each of its metrics; with fewer
    `calls` the same worker earlier (its values are a prefix of the later ones)."""
    timings = {
        name: {
            "sketch": sketch_of(
                [1e6 * (pid % 10 + k % 7) for k in range(calls + pid % 5)], errors=pid % 3
            ).to_dict(),
            "errors_by_type": {"ValueError": pid % 3} if pid % 3 else {},
        }
        for name, pids in METRICS.items()
        if pid in pids
    }
    stats: dict[str, Any] = {
        "now": 1000.0 + pid,
        "window_s": None,
        "span_s": 10.0 + pid % 4,
        "timings": timings,
    }
    if sql:
        stats["queries"] = query_stats(pid)
    return stats


@dataclass
class CodecCalls:
    """Every sketch decoded (by the id of the JSON it was decoded from) and encoded while counting."""

    decoded: Counter[int] = field(default_factory=Counter)
    encoded: list[int] = field(default_factory=list)


def count_codec_calls(monkeypatch: pytest.MonkeyPatch) -> CodecCalls:
    """From now on, count every sketch decoded and encoded (for the rest of the test)."""
    calls = CodecCalls()
    from_dict, to_dict = Sketch.from_dict, Sketch.to_dict

    def counting_from_dict(cls: type[Sketch], data: Any) -> Sketch:
        calls.decoded[id(data)] += 1
        return from_dict(data)

    def counting_to_dict(self: Sketch) -> dict[str, Any]:
        calls.encoded.append(id(self))
        return to_dict(self)

    monkeypatch.setattr(Sketch, "from_dict", classmethod(counting_from_dict))
    monkeypatch.setattr(Sketch, "to_dict", counting_to_dict)
    return calls


def test_each_timing_and_query_sketch_is_decoded_once_per_tick_and_never_re_encoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    results = {pid: worker_stats(pid, sql=True) for pid in WORKERS}
    infos = {pid: {"pid": pid, "name": "shop"} for pid in WORKERS}
    before = merge_stats([results[p] for p in WORKERS])  # the figures before, sketches in JSON
    expected_timings = timing_rows(before)
    expected_queries = [{k: v for k, v in q.items() if k != "sketch"} for q in before["queries"]["queries"]]
    sent = sum(len(s["timings"]) + len(s["queries"]["queries"]) for s in results.values())

    calls = count_codec_calls(monkeypatch)

    view = build_view(results, infos, None, WORKERS[0])  # one tick: the sampler's thread...
    rows = view_rows(view)
    snapshot = view.to_json()  # ...`snapshot --json` and recordings
    for name in view.sketches:  # ...and the detail screen's histogram
        histogram_text(view.sketches[name])

    assert sum(calls.decoded.values()) == sent
    assert set(calls.decoded.values()) == {1}
    assert calls.encoded == []
    assert view.timings == expected_timings
    assert snapshot["queries"] == expected_queries
    merged = {row.name: row for row in rows.timings}
    assert merged["checkout"].count == sum(50 + pid % 5 for pid in (301, 303))
    assert [row.pid for row in rows.workers["checkout"]] == [301, 303]
    assert view.figures[302].requests == 50 + 302 % 5
    assert rows.queries is not None
    by_fp = {q.fingerprint: q for q in rows.queries.queries}
    select = by_fp["SELECT * FROM orders WHERE id = ?"]
    assert select.count == sum(20 + pid % 7 for pid in WORKERS)
    assert select.n_plus_one and select.routes == ("GET /r301", "GET /r302", "GET /r303")


def old_window_timings(now: AgentView, base: AgentView, span: float) -> dict[str, dict[str, Any]]:
    """The window's rows as replay computed them before: each window sketch encoded, then decoded."""
    timings = {}
    for name, sketch in now.sketches.items():
        before = base.sketches.get(name)
        window = sketch.copy() if before is None else sketch_difference(sketch, before)
        if window.count:
            timings[name] = {"sketch": window.to_dict()}
    return timing_rows({"span_s": span, "timings": timings})


def test_replays_window_is_computed_without_encoding_or_decoding_a_sketch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    infos = {pid: {"pid": pid} for pid in WORKERS}
    now = build_view({pid: worker_stats(pid, calls=80) for pid in WORKERS}, infos, None, WORKERS[0])
    earlier = {pid: worker_stats(pid, calls=50) for pid in WORKERS}
    for pid in (301, 303):  # a metric new in the window: all of it is in the window
        del earlier[pid]["timings"]["checkout"]
    earlier[302]["timings"]["gc.gen0"] = worker_stats(302, calls=80)["timings"]["gc.gen0"]  # none in it
    base = build_view(earlier, infos, None, WORKERS[0])
    expected = old_window_timings(now, base, 30.0)

    calls = count_codec_calls(monkeypatch)

    window = agent_over_window(now, base, 30.0, 60.0)
    rows = view_rows(window)

    assert sum(calls.decoded.values()) == 0
    assert calls.encoded == []
    assert window.timings == expected
    assert "gc.gen0" not in window.timings and "gc.gen0" not in window.sketches
    merged = {row.name: row for row in rows.timings}
    assert merged["checkout"].count == now.timings["checkout"]["count"]
    assert merged["http GET /orders/{id}"].count == 3 * (80 - 50)
    assert merged["http GET /orders/{id}"].rate_per_s == pytest.approx(3 * 30 / 30.0)


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
