"""Zero-code Celery task timing, and final stats for billiard pool workers. Standard library only.

`perftop run` reaches Celery through its post-import hook (`perftop.agent.frameworks.HOOKS`): when the
program imports `celery.signals`, `instrument_celery` connects receivers to Celery's own signals (strong
references, one `dispatch_uid` each, so a second call changes nothing):

- `task_prerun` / `task_postrun`: every task run is timed by task name as `celery <task name>`, keyed by
  task id so that concurrent tasks (threads, gevent, eventlet pools) never mix. A run that ended in
  FAILURE, RETRY or REJECTED is an error of that timing under its exception's type (a retry is `Retry`:
  what `@perftop.time_it` on the task function would record); IGNORED (a task replaced, or ignoring
  itself) counts as done.
- `task_failure` for a task no timer in this process saw end (Celery's master reports those of a pool
  child killed by a hard time limit or lost): counted once per task id as `celery.lost <task name>`.
- `before_task_publish`, in a publisher that also runs under perftop: stamps the message with the
  publish time (header `perftop_sent_at`, unix seconds). The worker then records the queue wait,
  publish to start, as `celery.queue <task name>`; for a task given an ETA or countdown, from the later
  of publish and ETA (the wait once it was due). Celery's protocol 2 carries no publish time of its own,
  so a message from a publisher without perftop and without an ETA gets no queue wait: none is made up.
  Both ends read the wall clock: on two hosts, their clocks' offset is in the figure; a wait below zero
  or above `MAX_QUEUE_S` is taken for clock trouble and dropped.

Billiard (Celery's prefork pool) ends its pool workers with `os._exit` from inside the worker loop,
before multiprocessing's finalizers run, so the agent's exit work (a forked worker's final stats beside
its socket, the socket's removal) is hooked into `billiard.pool.Worker._do_exit` instead: a worker
recycled by `--max-tasks-per-child` keeps its counts in the merged view of the master.

A failure in here is logged once and never reaches the app or the task.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime
from types import ModuleType
from typing import Any

from perftop.agent.pump import log_once, pump
from perftop.agent.recorder import MAX_PENDING, Timing, count, registry

__all__ = [
    "LOST_PREFIX",
    "MAX_QUEUE_S",
    "QUEUE_PREFIX",
    "SENT_HEADER",
    "TASK_PREFIX",
    "eta_seconds",
    "instrument_billiard",
    "instrument_celery",
]

TASK_PREFIX = "celery "
"""Timings of task runs: `celery proj.tasks.add`."""
QUEUE_PREFIX = "celery.queue "
"""Timings of the wait from publish (or ETA) to start: `celery.queue proj.tasks.add`."""
LOST_PREFIX = "celery.lost "
"""Counters of failures of tasks that no timer in this process saw end (killed pool children)."""
SENT_HEADER = "perftop_sent_at"
"""The message header a publisher under perftop stamps with the publish time (unix seconds)."""
MAX_QUEUE_S = 7 * 24 * 3600.0
"""A wait longer than this (or below zero) is clock trouble, not a wait."""
MAX_RUNNING = 65536
"""Task runs timed at once, at most; past it (postruns that never came), new runs go untimed."""
MAX_CACHED_NAMES = 4096
"""Task names whose metrics are kept at hand; past it, each run asks the registry (a dict lookup more)."""
MAX_LOST_IDS = 1024
"""Task ids of lost tasks remembered, so that one Celery reports twice (a hard time limit: once as the
pool's error, once as the timeout) counts once."""
_UID = "perftop"
_DJANGO_HOOK = "perftop.agent.django"
_IGNORED = "IGNORED"
_SUCCESS = "SUCCESS"

_pc = time.perf_counter_ns
_started: dict[Any, int] = {}
"""perf_counter_ns at the start of each running task, by task id."""
_metrics: dict[tuple[str, Any], Timing] = {}
_lost: dict[Any, None] = {}
"""The latest lost task ids, oldest first."""


def _timing(prefix: str, task: Any) -> Timing:
    key = (prefix, getattr(task, "name", None))
    metric = _metrics.get(key)
    if metric is None:
        metric = registry.timing(f"{prefix}{key[1]}")
        if len(_metrics) < MAX_CACHED_NAMES:
            _metrics[key] = metric
    return metric


def _record(metric: Timing, value: int) -> None:
    if len(metric.buf) < MAX_PENDING:
        metric.append(value)
    else:
        metric.dropped += 1


def eta_seconds(eta: Any) -> float | None:
    """A task's ETA (Celery sends an ISO 8601 string; eager calls may hold a datetime) as unix seconds;
    None where it has none or it names no time zone (a naive ETA is in the app's zone, unknown here)."""
    if isinstance(eta, str):
        eta = datetime.fromisoformat(eta)
    if isinstance(eta, datetime) and eta.tzinfo is not None:
        return eta.timestamp()
    return None


def _queue_wait(task: Any, now: float) -> None:
    """Record the wait of the task starting now, when its message says since when it waited."""
    request = getattr(task, "request", None)
    sent = getattr(request, SENT_HEADER, None)
    eta = eta_seconds(getattr(request, "eta", None))
    since = sent if isinstance(sent, (int, float)) and not isinstance(sent, bool) else None
    if eta is not None:
        since = eta if since is None else max(since, eta)
    if since is None:
        return
    wait = now - since
    if 0.0 <= wait <= MAX_QUEUE_S:
        _record(_timing(QUEUE_PREFIX, task), int(wait * 1e9))


def _prerun(sender: Any = None, task_id: Any = None, task: Any = None, **_: Any) -> None:
    """A task starts in this process: note when, record its queue wait, and start the N+1 counts of
    this thread's Django connections afresh (a task is a unit of work, as a request is; not an eager
    run, which is part of its caller's, a request's perhaps)."""
    try:
        django = sys.modules.get(_DJANGO_HOOK)  # imported once Django's ORM is instrumented
        request = getattr(task if task is not None else sender, "request", None)
        if django is not None and not getattr(request, "is_eager", False):
            django.new_unit_of_work()
        if len(_started) < MAX_RUNNING:
            _started[task_id] = _pc()
        _queue_wait(task if task is not None else sender, time.time())
    except Exception as exc:
        log_once("celery-prerun", "could not time the start of a Celery task", exc=exc)


def _postrun(
    sender: Any = None, task_id: Any = None, task: Any = None, retval: Any = None, state: Any = None, **_: Any
) -> None:
    """A task ended in this process: record its run, as an error of its exception's type if it failed."""
    try:
        t0 = _started.pop(task_id, None)
        if t0 is None:
            return
        duration = _pc() - t0
        metric = _timing(TASK_PREFIX, task if task is not None else sender)
        if state in (_SUCCESS, _IGNORED) or not isinstance(retval, BaseException):
            _record(metric, duration)
        else:
            metric.error(duration, retval)
    except Exception as exc:
        log_once("celery-postrun", "could not record the end of a Celery task", exc=exc)


def _failure(sender: Any = None, task_id: Any = None, **_: Any) -> None:
    """Celery reports a failed task: one running here ends in `_postrun`; one that no timer here saw end
    (Celery's master, for a pool child killed by a hard time limit or lost) is counted, once per task id."""
    try:
        if task_id not in _started and task_id not in _lost:
            _lost[task_id] = None
            if len(_lost) > MAX_LOST_IDS:
                del _lost[next(iter(_lost))]
            count(f"{LOST_PREFIX}{getattr(sender, 'name', None)}")
    except Exception as exc:
        log_once("celery-failure", "could not count a failed Celery task", exc=exc)


def _before_publish(sender: Any = None, headers: Any = None, **_: Any) -> None:
    """A task message is about to be published (Celery message protocol 2): stamp the publish time."""
    try:
        if isinstance(headers, dict) and "id" in headers and "task" in headers:
            headers[SENT_HEADER] = time.time()
    except Exception as exc:
        log_once("celery-publish", "could not stamp a Celery task message's publish time", exc=exc)


def instrument_celery(signals: ModuleType) -> None:
    """Connect the task timing receivers to Celery's signals (the module `celery.signals`). Idempotent."""
    for name, receiver in (
        ("task_prerun", _prerun),
        ("task_postrun", _postrun),
        ("task_failure", _failure),
        ("before_task_publish", _before_publish),
    ):
        signal = getattr(signals, name, None)
        if signal is not None:
            signal.connect(receiver, weak=False, dispatch_uid=f"{_UID}.{name}")


def _leave() -> None:
    """In a billiard pool worker about to `os._exit`: the agent's exit work (final stats, socket)."""
    try:
        pump.run_exit_hooks()
    except Exception as exc:
        log_once("billiard-exit", "could not leave a billiard worker's final stats", exc=exc)


def instrument_billiard(pool: ModuleType) -> None:
    """Run the agent's exit work in billiard pool workers before they `os._exit` (the module
    `billiard.pool`). Idempotent."""
    worker = getattr(pool, "Worker", None)
    original = getattr(worker, "__dict__", {}).get("_do_exit")
    if worker is None or original is None or getattr(original, "_perftop_patched", False):
        return

    def _do_exit(self: Any, *args: Any, **kwargs: Any) -> Any:
        _leave()
        return original(self, *args, **kwargs)

    _do_exit._perftop_patched = True  # type: ignore[attr-defined]
    _do_exit.__wrapped__ = original  # type: ignore[attr-defined]
    worker._do_exit = _do_exit


def _after_fork_in_child() -> None:
    _started.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
