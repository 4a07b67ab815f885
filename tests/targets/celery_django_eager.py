"""Celery tasks run eagerly inside a Django request (as an app does in development or its tests), with
perftop's Celery and Django hooks: prints JSON {"count", "n_plus_one"} of the query the request's loop ran
12 times, one eager task per round. Knows nothing of perftop but the two `instrument` calls."""

from __future__ import annotations

import json
import sys

import celery
from celery import signals as celery_signals
from django.conf import settings

settings.configure(
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}, USE_TZ=True
)

import django  # noqa: E402

django.setup()

from django.core import signals  # noqa: E402
from django.db import connection  # noqa: E402

import perftop  # noqa: E402
from perftop.agent import sqlalchemy, tasks  # noqa: E402

perftop.instrument_django()
tasks.instrument_celery(celery_signals)
app = celery.Celery("eager", set_as_current=False)


@app.task(name="eager.noop")
def noop(x: int) -> int:
    return x


signals.request_started.send(sender=None)
with connection.cursor() as cursor:
    for n in range(12):
        cursor.execute("SELECT %s", [n])
        cursor.fetchone()
        assert noop.apply((n,)).get() == n
signals.request_finished.send(sender=None)
row = next(q for q in sqlalchemy.query_stats(None)["queries"] if q["fingerprint"] == "SELECT ?")
sys.stdout.write(json.dumps({"count": row["count"], "n_plus_one": row["n_plus_one"]}) + "\n")
