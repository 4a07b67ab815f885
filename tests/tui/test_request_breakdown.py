"""Enter on a web route's timing shows where its requests spend their time: SQL or code, how many queries,
and the waterfall of its slowest requests."""

from __future__ import annotations

from textual.app import App
from textual.widgets import Static

from perftop.tui.screens.metric_detail import MetricDetail
from perftop.wire.sketch import Sketch

ROUTE = {
    "count": 40,
    "errors": 0,
    "p50_ms": 3.0,
    "p99_ms": 9.0,
    "sql_ms_mean": 1.2,
    "sql_share_percent": 38.0,
    "queries_mean": 6.0,
    "queries_p99": 6.0,
    "queries_max": 6,
    "queue_p99_ms": None,
    "top_fingerprints": [
        "SELECT name FROM users WHERE id = ?",
        "SELECT id, user_id FROM posts WHERE user_id = ?",
    ],
    "slowest": [
        {
            "at": 0.0,
            "duration_ms": 9.5,
            "sql_ms": 2.5,
            "query_count": 2,
            "queries": [
                {
                    "fingerprint": "SELECT id, user_id FROM posts WHERE user_id = ?",
                    "ms": 1.5,
                    "rows": 5,
                    "call_site": {"file": "/srv/app/views.py", "line": 31, "function": "posts"},
                },
                {
                    "fingerprint": "SELECT name FROM users WHERE id = ?",
                    "ms": 1.0,
                    "rows": 1,
                    "call_site": {"file": "/srv/app/templates/posts.html", "line": 3, "function": "template"},
                },
            ],
        }
    ],
}


async def test_a_routes_detail_shows_its_sql_share_queries_and_slowest_waterfall() -> None:
    sketch = Sketch()
    for v in (2e6, 3e6, 9e6):
        sketch.add(v)
    row = {"count": 40, "errors": 0, "p50_ms": 3.0, "p99_ms": 9.0, "max_ms": 9.5}
    app: App[None] = App()
    async with app.run_test(size=(140, 50)) as pilot:
        app.push_screen(MetricDetail("http GET /users/{uid}/posts", sketch, row, [], [], {}, ROUTE))
        await pilot.pause()
        text = str(app.screen.query_one("#breakdown", Static).render())
        lines = text.splitlines()
        assert lines[0].startswith("SQL 1.2") and "38% of the time" in lines[0]
        assert lines[1] == "queries per request: mean 6.0, p99 6, max 6"
        waterfall = lines[lines.index(next(x for x in lines if x.startswith("slow request"))) + 1 :]
        assert (
            "SELECT id, user_id FROM posts WHERE user_id = ?" in waterfall[0]
            and "views.py:31" in waterfall[0]
        )
        assert "templates/posts.html:3" in waterfall[1]


async def test_a_timing_that_is_not_a_route_has_no_breakdown() -> None:
    app: App[None] = App()
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(MetricDetail("checkout", Sketch(), {}, [], [], {}))
        await pilot.pause()
        assert not app.screen.query("#breakdown")
