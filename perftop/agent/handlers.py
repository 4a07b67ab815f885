"""What the agent answers to a viewer's requests: info, stats, history, and the actions and explain that
run on their own worker thread. Standard library only.

The socket server (`perftop.agent.server`) owns the connections and hands each request here with the id
of the connection it came on; the answer goes back as a `Response`, or later, for an action, through
`finished()`. Actions (profiling, explain) run on one separate worker thread, "perftop-action", so stats
keep flowing while one runs; one action at a time, bounded in time, cancelled when its viewer goes.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import importlib.util
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from perftop import _version
from perftop.agent import gcwatch
from perftop.agent import routes as request_stats
from perftop.agent.pump import log_once
from perftop.agent.recorder import registry
from perftop.agent.threads import set_native_thread_name
from perftop.wire import paths
from perftop.wire.protocol import (
    BINS_DENSE,
    Hello,
    ProtocolError,
    Request,
    Response,
    bins_form,
    pack_counts,
    packed_param,
    window_seconds,
)

METHODS = ("info", "stats", "history", "action", "explain")
MAX_ACTION_SECONDS = 300.0
"""Cap on an action's `seconds` parameter."""
ACTION_GRACE_S = 30.0
"""After its seconds (or MAX_ACTION_SECONDS) plus this, a running action is asked to cancel."""
FINAL_KEEP_S = 300.0
"""A worker's final stats file outlives it this long at least (viewers read it within a refresh)."""


@dataclass
class Job:
    """One action or explain: asked on connection `conn_id`, answered to it when done."""

    method: str
    name: str
    params: dict[str, Any]
    conn_id: int
    request_id: int
    started: float
    deadline: float
    cancel: threading.Event = field(default_factory=threading.Event)
    ok: bool = False
    result: Any = None
    error: str | None = None


class Handlers:
    """The agent's answers, and its action worker. `wake` tells the agent thread an action is done;
    `server_overflow` gives the socket server's own counts for `stats`' `overflow`."""

    def __init__(self, wake: Callable[[], None], server_overflow: Callable[[], dict[str, int]]) -> None:
        self._wake = wake
        self._server_overflow = server_overflow
        self.name: str | None = None
        self.started_at: float | None = None
        self.capabilities: list[str] = list(METHODS)
        self.job: Job | None = None
        """The action running (or queued), if any."""
        self._jobs: queue.Queue[Job] = queue.Queue(maxsize=1)
        self._done: collections.deque[Job] = collections.deque()
        self._worker: threading.Thread | None = None

    def reset_after_fork(self) -> None:
        """In a forked child: no action runs (its worker thread did not follow)."""
        self.job = None
        self._jobs = queue.Queue(maxsize=1)
        self._done = collections.deque()
        self._worker = None

    def hello(self) -> Hello:
        return Hello(
            role="agent",
            pid=os.getpid(),
            agent_version=_version.__version__,
            python=sys.version.split()[0],
            argv=[str(a) for a in sys.argv],
            started_at=self.started_at,
            name=self.name,
            capabilities=list(self.capabilities),
        )

    def dispatch(self, conn_id: int, request: Request) -> Response | None:
        """The answer to `request`, or None when an action started (its answer comes from `finished`)."""
        method, params = request.method, request.params
        if method == "info":
            info = self.hello().to_dict()
            keys = ("pid", "protocol", "agent_version", "python", "argv", "started_at", "name")
            return Response(request.id, True, {k: info[k] for k in keys})
        if method == "stats":
            try:
                window = window_seconds(params.get("window"))
                dense = bins_form(params.get("bins")) == BINS_DENSE
                packed = packed_param(params.get("packed"))
            except ProtocolError as exc:
                return Response(request.id, False, error=str(exc))
            return Response(request.id, True, self.stats(window, dense, packed))
        if method == "history":
            metric = params.get("metric")
            if not isinstance(metric, str):
                return Response(request.id, False, error="'metric' must be a metric name")
            registry.flush()
            history = registry.history(metric, bool(params.get("fine", False)))
            if history is None:
                return Response(request.id, False, error=f"no timing named {metric!r}")
            return Response(request.id, True, history)
        if method in ("action", "explain"):
            return self._start_job(conn_id, request)
        return Response(
            request.id, False, error=f"unknown method {method!r}; this agent serves: {', '.join(METHODS)}"
        )

    def stats(self, window: float | None, dense: bool = False, packed: bool = False) -> dict[str, Any]:
        """The `stats` answer over `window` (None: since start); `dense`: the timings' sketches with
        dense bins (see protocol.bins_form), their counts `packed` if asked (protocol.packed_param)."""
        registry.flush()
        now = time.time()
        span = registry.span(window, now)
        overflow = registry.overflow()
        overflow.update(self._server_overflow())
        timings = registry.timings_stats(window, now)
        if dense:
            for timing in timings.values():
                _densify(timing["sketch"], packed)
        return {
            "now": now,
            "window_s": window,
            "span_s": span,
            "timings": timings,
            "counters": registry.counters_stats(window, now, span),
            "gauges": registry.gauges_stats(),
            "overflow": overflow,
            "gc": gcwatch.gc_stats(),
            "queries": _query_stats(window),
            "requests": request_stats.snapshot(),
            "memory": _memory_state(),
        }

    # -- actions ---------------------------------------------------------------------------------------

    def _start_job(self, conn_id: int, request: Request) -> Response | None:
        params = dict(request.params)
        if request.method == "action":
            name = params.pop("name", None)
            if not isinstance(name, str) or not name:
                return Response(request.id, False, error="'name' must name an action")
        else:
            name = "explain"
        seconds = params.get("seconds")
        limit = MAX_ACTION_SECONDS
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
                return Response(request.id, False, error="'seconds' must be a positive number")
            if seconds > MAX_ACTION_SECONDS:
                params["seconds"] = MAX_ACTION_SECONDS
            limit = min(float(seconds), MAX_ACTION_SECONDS)
        job = self.job
        if job is not None:
            running = time.monotonic() - job.started
            return Response(request.id, False, error=f"busy: {job.name} running for {running:.1f} s")
        now = time.monotonic()
        job = Job(request.method, name, params, conn_id, request.id, now, now + limit + ACTION_GRACE_S)
        self.job = job
        self._ensure_worker()
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self.job = None
            return Response(request.id, False, error="busy: the action worker is not ready")
        return None

    def waits_for(self, conn_id: int) -> bool:
        """Whether the connection `conn_id` waits for a running action's answer."""
        job = self.job
        return job is not None and job.conn_id == conn_id

    def cancel(self, conn_id: int | None = None) -> None:
        """Ask the running action to stop (only if it is `conn_id`'s, when given)."""
        job = self.job
        if job is not None and (conn_id is None or job.conn_id == conn_id):
            job.cancel.set()

    def expire(self, now: float) -> None:
        """Ask an action past its deadline (monotonic `now`) to stop."""
        job = self.job
        if job is not None and now > job.deadline:
            job.cancel.set()

    def finished(self) -> Iterator[tuple[int, Response]]:
        """(connection id, answer) of each action done since last asked."""
        while self._done:
            job = self._done.popleft()
            if self.job is job:
                self.job = None
            yield job.conn_id, Response(job.request_id, job.ok, job.result if job.ok else None, job.error)

    def _ensure_worker(self) -> None:
        if self._worker is not None and self._worker.is_alive():
            return
        self._worker = threading.Thread(target=self._work, name="perftop-action", daemon=True)
        self._worker.start()

    def _work(self) -> None:
        """The action worker thread: runs one job at a time and hands it back to the agent thread."""
        set_native_thread_name("perftop-action")
        jobs = self._jobs
        while True:
            job = jobs.get()
            try:
                job.result = _run_job(job)
                job.ok = True
            except Exception as exc:
                job.error = _job_error(job, exc)
            self._done.append(job)
            self._wake()

    # -- a worker's final stats ------------------------------------------------------------------------

    def write_final(self, path: str) -> None:
        """Write this worker's since-start stats beside its socket `path` as `<pid>.final` (0600,
        atomically), so that viewers merging the workers keep what it counted after their last poll when
        it is recycled or reloaded (read by perftop.collectors.workers)."""
        try:
            sweep_finals(os.path.dirname(path))
            doc = {
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "exited_at": time.time(),
                "stats": self.stats(None),
            }
            tmp = f"{path[: -len(paths.SOCKET_SUFFIX)]}.final.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(json.dumps(doc).encode())
            os.replace(tmp, tmp[: -len(".tmp")])
        except Exception as exc:
            log_once("final", "could not write the final stats at exit", exc=exc)


def available_methods() -> list[str]:
    """The methods whose implementation can be imported (actions and explain live in other modules)."""
    out = ["info", "stats", "history"]
    for method, module in (("action", "perftop.agent.actions"), ("explain", "perftop.agent.sqlalchemy")):
        try:
            if importlib.util.find_spec(module) is not None:
                out.append(method)
        except (ImportError, ValueError):
            pass
    return out


def _run_job(job: Job) -> Any:
    """Run one action or explain (in the worker thread); ImportError means it is not available."""
    if job.method == "explain":
        try:
            sa_hook = importlib.import_module("perftop.agent.sqlalchemy")
        except ImportError as exc:
            raise _NotAvailable(f"explain is not available in this agent: {exc}") from None
        return sa_hook.explain(job.params, job.cancel)
    try:
        actions = importlib.import_module("perftop.agent.actions")
    except ImportError as exc:
        raise _NotAvailable(f"actions are not available in this agent: {exc}") from None
    return actions.run_action(job.name, job.params, job.cancel)


class _NotAvailable(Exception):
    pass


def _job_error(job: Job, exc: Exception) -> str:
    if isinstance(exc, _NotAvailable) or type(exc).__name__ in ("ActionError", "ExplainError"):
        return str(exc) or type(exc).__name__
    log_once(f"job-{job.name}-{type(exc).__name__}", f"action {job.name!r} failed", exc=exc)
    return f"{job.name} failed: {type(exc).__name__}: {exc}"


def _densify(sketch: dict[str, Any], packed: bool) -> None:
    """Replace a serialized sketch's `bins` pairs (ascending, as `Sketch.to_dict` writes them) by `lo` and
    `counts`, the dense form of protocol.bins_form, `packed` (with their `width`) if asked. Cheaper to
    send than the pairs: the JSON of 25,000 small lists costs the agent twice what this loop does."""
    bins = sketch.pop("bins")
    lo = bins[0][0] if bins else 0
    counts = [0] * (bins[-1][0] - lo + 1) if bins else []
    for index, n in bins:
        counts[index - lo] = n
    sketch["lo"] = lo
    if packed:
        sketch["width"], sketch["counts"] = pack_counts(counts)
    else:
        sketch["counts"] = counts


def _memory_state() -> dict[str, Any] | None:
    """tracemalloc's state, once perftop's memory action was loaded (None before: nothing to show)."""
    memory = sys.modules.get("perftop.agent.memory")
    return None if memory is None else memory.tracing_state()


def _query_stats(window: float | None) -> Any:
    """The SQLAlchemy hook's query stats if that hook has been loaded, else None."""
    module = sys.modules.get("perftop.agent.sqlalchemy")
    query_stats = getattr(module, "query_stats", None)
    if query_stats is None:
        return None
    try:
        return query_stats(window)
    except Exception as exc:
        log_once("query-stats", "the SQLAlchemy hook's query_stats failed", exc=exc)
        return None


def sweep_finals(directory: str) -> None:
    """Remove final stats files of dead workers older than FINAL_KEEP_S (those no viewer swept), and the
    half-written `.final.tmp` of workers killed while writing theirs, so that a server recycling its
    workers all day leaves a bounded number of them."""
    now = time.time()
    for name in os.listdir(directory):
        pid = name.partition(".")[0]
        if name.endswith((".final", ".final.tmp")) and pid.isdigit() and not paths.pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                old = os.path.join(directory, name)
                if now - os.lstat(old).st_mtime > FINAL_KEEP_S:
                    os.unlink(old)
