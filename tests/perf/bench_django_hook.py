"""Benchmark: what perftop's Django ORM hook costs per query.

Run by hand from the repository root: `.venv/bin/python tests/perf/bench_django_hook.py`.

In-memory SQLite through Django, one thread's connection: `SELECT 1` on a Django cursor (execute, fetch,
close, the ORM's own path for a query with rows) and `Model.objects.filter(pk=1).first()` (a real ORM
lookup), each in microseconds per query, the median of several interleaved repeats of CPU time
(`time.process_time_ns`: perftop's aggregation thread included; `--clock wall` for wall time), for
  bare            no execute wrapper (perftop's `CursorWrapper.close` wrapper is in place in every variant
                  once loaded: this is what a connection perftop does not record pays),
  empty wrapper   an execute wrapper that only calls through (what any such hook starts from),
  perftop         `perftop.agent.django.instrument()`, its wrapper on the connection.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from django.conf import settings

settings.configure(
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    INSTALLED_APPS=[],
    USE_TZ=False,
)

import django  # noqa: E402

django.setup()

from django.db import connection, models  # noqa: E402

from perftop.agent import django as hook  # noqa: E402


class Item(models.Model):
    name = models.CharField(max_length=20)

    class Meta:
        app_label = "bench"


def _select_one() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchall()


def _lookup() -> None:
    Item.objects.filter(pk=1).first()


def _through(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    return execute(sql, params, many, context)


def _measure(query: Callable[[], None], n: int, clock: Callable[[], int]) -> float:
    t0 = clock()
    for _ in range(n):
        query()
    return (clock() - t0) / n / 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20_000, help="queries per measurement")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    clock = time.process_time_ns if args.clock == "cpu" else time.perf_counter_ns

    with connection.schema_editor() as editor:
        editor.create_model(Item)
    Item.objects.create(name="one")
    hook.instrument(slow_ms=1e9)
    ours = connection.execute_wrappers[0]
    wrappers: dict[str, list[Any]] = {"bare": [], "empty wrapper": [_through], "perftop": [ours]}
    for name, query in (("SELECT 1 on a cursor", _select_one), ("ORM lookup by pk", _lookup)):
        results: dict[str, list[float]] = {variant: [] for variant in wrappers}
        for installed in wrappers.values():
            connection.execute_wrappers[:] = installed
            _measure(query, args.n // 10, clock)  # warm up
        for _ in range(args.repeats):
            for variant, installed in wrappers.items():
                connection.execute_wrappers[:] = installed
                results[variant].append(_measure(query, args.n, clock))
        bare = statistics.median(results["bare"])
        sys.stdout.write(f"{name} ({args.clock} time, median of {args.repeats} x {args.n}):\n")
        for variant, values in results.items():
            median = statistics.median(values)
            extra = "" if variant == "bare" else f"  (+{median - bare:.1f})"
            sys.stdout.write(f"  {variant:<14} {median:7.1f} us/query{extra}\n")


if __name__ == "__main__":
    main()
