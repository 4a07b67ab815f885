"""The Celery hook on Celery's own signals, in this process: tasks run eagerly (`Task.apply`), which fires
the same task_prerun / task_postrun signals a worker does. Oracles: the runs and exceptions the test made,
the test's own clock around a publish."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from perftop.agent import tasks
from perftop.agent.recorder import registry
from perftop.wire.sketch import Sketch

celery = pytest.importorskip("celery")
signals = pytest.importorskip("celery.signals")

app = celery.Celery("perftop-unit", set_as_current=False)


@pytest.fixture(autouse=True)
def _disconnect_after() -> Iterator[None]:
    """The receivers are process-wide: leave none behind, or this process's later publishes (the
    integration tests') would carry perftop's stamp."""
    yield
    for name in ("task_prerun", "task_postrun", "task_failure", "before_task_publish"):
        getattr(signals, name).disconnect(dispatch_uid=f"{tasks._UID}.{name}")


@app.task(name="perftop_unit.double")
def double(x: int) -> int:
    return 2 * x


@app.task(name="perftop_unit.boom")
def boom(kind: str) -> None:
    raise {"ValueError": ValueError, "KeyError": KeyError}[kind](kind)


def _stats(name: str) -> tuple[int, int, dict[str, int]]:
    """(count, errors, errors by type) of a timing since start."""
    registry.flush()
    stats = registry.timings_stats(None, time.time()).get(name)
    if stats is None:
        return 0, 0, {}
    sketch = Sketch.from_dict(stats["sketch"])
    return sketch.count, sketch.errors, stats["errors_by_type"]


def test_runs_are_timed_once_by_name_with_errors_by_type_however_often_it_is_instrumented() -> None:
    tasks.instrument_celery(signals)
    tasks.instrument_celery(signals)  # a second hook, a reload: still one receiver each
    before_ok = _stats("celery perftop_unit.double")
    before_bad = _stats("celery perftop_unit.boom")
    assert [double.apply((i,)).get() for i in range(7)] == [2 * i for i in range(7)]
    for kind in ("ValueError", "KeyError", "ValueError"):
        with pytest.raises((ValueError, KeyError)):
            boom.apply((kind,)).get()
    count, errors, _ = _stats("celery perftop_unit.double")
    assert (count - before_ok[0], errors - before_ok[1]) == (7, 0)
    count, errors, by_type = _stats("celery perftop_unit.boom")
    assert (count - before_bad[0], errors - before_bad[1]) == (3, 3)
    assert by_type["ValueError"] - before_bad[2].get("ValueError", 0) == 2
    assert by_type["KeyError"] - before_bad[2].get("KeyError", 0) == 1
    # no publish stamp, no ETA: no queue wait is made up
    assert _stats("celery.queue perftop_unit.double") == (0, 0, {})


def test_a_published_message_is_stamped_with_the_publish_time() -> None:
    tasks.instrument_celery(signals)
    headers: dict[str, Any] = {"id": "a-task-id", "task": "perftop_unit.double"}
    t0 = time.time()
    signals.before_task_publish.send(sender="perftop_unit.double", headers=headers, body=((1,), {}, {}))
    t1 = time.time()
    assert t0 <= headers[tasks.SENT_HEADER] <= t1
    protocol_1: dict[str, Any] = {}  # protocol 1 keeps the task in the body: nothing added
    signals.before_task_publish.send(sender="perftop_unit.double", headers=protocol_1, body={})
    assert protocol_1 == {}


def test_etas_with_a_time_zone_are_read_and_naive_ones_are_not() -> None:
    due = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=timezone(timedelta(hours=2)))
    assert tasks.eta_seconds(due.isoformat()) == due.timestamp()
    assert tasks.eta_seconds(due) == due.timestamp()
    assert tasks.eta_seconds(due.replace(tzinfo=None).isoformat()) is None
    assert tasks.eta_seconds(None) is None


def test_odd_messages_never_raise_into_celery_and_the_run_still_counts() -> None:
    tasks.instrument_celery(signals)
    task = app.tasks["perftop_unit.double"]
    before = _stats("celery perftop_unit.double")[0]
    task.push_request(id="odd", eta="not a date", perftop_sent_at="not a time")
    try:
        signals.task_prerun.send(sender=task, task_id="odd", task=task, args=(), kwargs={})
        signals.task_postrun.send(
            sender=task, task_id="odd", task=task, args=(), kwargs={}, retval=2, state="SUCCESS"
        )
    finally:
        task.pop_request()
    signals.task_prerun.send(sender=task, task_id=["unhashable"], task=task, args=(), kwargs={})
    signals.task_postrun.send(sender=task, task_id=["unhashable"], task=task, retval=2, state="SUCCESS")
    signals.task_failure.send(sender=task, task_id=["unhashable"], exception=ValueError())
    signals.before_task_publish.send(sender="x", headers=None, body=None)
    assert _stats("celery perftop_unit.double")[0] == before + 1
    assert _stats("celery.queue perftop_unit.double") == (0, 0, {})
