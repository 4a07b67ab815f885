"""A Celery app for `perftop run` tests: it imports nothing from perftop.

Broker from CELERY_BROKER, results in CELERY_BACKEND, every task on the queue CELERY_QUEUE.
As a worker: `celery -A celery_app worker ...` (from this directory).
As a publisher: `python celery_app.py publish BURNS N` sends BURNS `burn(1.5)` tasks (to keep the pool
busy), then N `started` tasks, each stamped with the wall time just before its `apply_async`; waits for
all, and prints one JSON line per `started` task: {"sent": publish time, "started": start time, "pid"}.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from celery import Celery

app = Celery("celery_app", broker=os.environ["CELERY_BROKER"], backend=os.environ["CELERY_BACKEND"])
app.conf.update(
    task_default_queue=os.environ["CELERY_QUEUE"],
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)


@app.task
def started() -> tuple[int, float]:
    """The worker's PID and the wall time this run started: the test's own queue-wait oracle."""
    return os.getpid(), time.time()


@app.task
def due() -> tuple[int, float]:
    """As `started`, for tasks sent with an ETA."""
    return os.getpid(), time.time()


@app.task
def nap(seconds: float) -> float:
    """Sleeps `seconds`; returns how long it slept by its own clock."""
    t0 = time.perf_counter()
    time.sleep(seconds)
    return time.perf_counter() - t0


@app.task
def fail(kind: str) -> None:
    """Fails with the exception type named `kind`."""
    errors: dict[str, type[Exception]] = {"ValueError": ValueError, "KeyError": KeyError}
    raise errors[kind](kind)


@app.task(bind=True, max_retries=1, default_retry_delay=0)
def flaky(self: Any) -> int:
    """Asks for one retry, then succeeds."""
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return os.getpid()


@app.task
def lookup(key: int, times: int = 1) -> int:
    """Reads `key` back `times` times through Django's database layer (SQLite in memory, Django set up
    on the first run in each pool child, whose connection is then kept across tasks); the worker's PID."""
    from django.conf import settings

    if not settings.configured:
        database = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
        settings.configure(DATABASES={"default": database}, USE_TZ=True)
        import django

        django.setup()
    from django.db import connection

    with connection.cursor() as cursor:
        for _ in range(times):
            cursor.execute("SELECT %s", [key])  # LOOKUP
            assert cursor.fetchone()[0] == key
    return os.getpid()


def planted_cpu_loop(seconds: float) -> int:
    """Burns CPU for `seconds`: what a profile of the pool must find."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n


@app.task
def burn(seconds: float) -> int:
    """Burns CPU for `seconds`; returns the worker's PID."""
    planted_cpu_loop(seconds)
    return os.getpid()


def publish(burns: int, n: int) -> None:
    app.connection().ensure_connection(max_retries=3)
    busy = [burn.apply_async((1.5,)) for _ in range(burns)]
    sent: list[tuple[float, Any]] = []
    for _ in range(n):
        t = time.time()
        sent.append((t, started.apply_async()))
    for result in busy:
        result.get(timeout=120)
    for t, result in sent:
        pid, start = result.get(timeout=120)
        sys.stdout.write(json.dumps({"sent": t, "started": start, "pid": pid}) + "\n")
    sys.stdout.flush()


if __name__ == "__main__" and sys.argv[1:2] == ["publish"]:
    publish(int(sys.argv[2]), int(sys.argv[3]))
