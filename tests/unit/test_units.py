"""Number and path formatting shared by the TUI and the text reports."""

from __future__ import annotations

import pytest

from perftop.render.units import fmt_count, fmt_ms, short_path


@pytest.mark.parametrize(
    ("path", "short"),
    [
        (
            "/srv/.venv/lib/python3.11/site-packages/sqlalchemy/engine/cursor.py",
            "sqlalchemy/engine/cursor.py",
        ),
        ("/usr/lib/python3/dist-packages/apt/cache.py", "apt/cache.py"),
        ("/root/.pyenv/versions/3.13.0/lib/python3.13/asyncio/base_events.py", "asyncio/base_events.py"),
        ("/usr/lib/python3.13t/threading.py", "threading.py"),
        ("/srv/app/views.py", "/srv/app/views.py"),
        ("/home/deploy/releases/20261201-1200/shop/orders/views.py", "…/shop/orders/views.py"),
        ("<frozen runpy>", "<frozen runpy>"),
        (
            "relative/but/quite/a/long/path/to/some/module/file.py",
            "relative/but/quite/a/long/path/to/some/module/file.py",
        ),
    ],
)
def test_short_path(path: str, short: str) -> None:
    assert short_path(path) == short


def test_short_path_always_and_fewer_components() -> None:
    assert short_path("/srv/app/views.py", keep=2, longer_than=0) == "…/app/views.py"
    assert short_path("/views.py", keep=2, longer_than=0) == "/views.py"


def test_fmt_ms_and_count() -> None:
    assert [fmt_ms(v) for v in (None, 0.0005, 0.25, 12.345, 4321.0)] == [
        "-",
        "500ns",
        "250µs",
        "12.3ms",
        "4.32s",
    ]
    assert [fmt_count(v) for v in (None, 7, 12_345, 3_400_000)] == ["-", "7", "12.3k", "3.4M"]
