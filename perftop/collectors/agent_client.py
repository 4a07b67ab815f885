"""The viewer's side of the agent socket: a blocking client, and what to do with the stats it fetches.

`AgentClient` connects, checks with SO_PEERCRED that the socket is served by the process it names
(`<pid>.sock`) running as that process's uid (a squatter's fake agent is refused), exchanges hellos and
makes requests with timeouts; if the agent closed the connection between requests (an idle viewer makes
room for another), the next request reconnects. `merge_stats` merges the
`stats` of several processes (gunicorn workers...) by merging their sketches, never by averaging
percentiles; `timing_rows` turns stats into the `timings` object of `perftop snapshot --json`.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import time
from types import TracebackType
from typing import Any

from perftop.collectors.discovery import find_agent, find_child_agents, socket_dir
from perftop.wire import paths
from perftop.wire.protocol import (
    MAX_FRAME_BYTES,
    ErrorFrame,
    FrameDecoder,
    Hello,
    ProtocolError,
    Request,
    Response,
    encode,
)
from perftop.wire.sketch import Sketch, SketchError

__all__ = [
    "AgentClient",
    "AgentError",
    "RequestFailed",
    "find_agent",
    "find_child_agents",
    "merge_queries",
    "merge_stats",
    "socket_dir",
    "timing_rows",
]

NS_PER_MS = 1_000_000.0
_PEERCRED = struct.Struct("3i")
QUANTILES = (("p50_ms", 0.5), ("p90_ms", 0.9), ("p95_ms", 0.95), ("p99_ms", 0.99), ("p999_ms", 0.999))


class AgentError(Exception):
    """The agent refused, failed a request, spoke a different protocol, or went away."""


class RequestFailed(AgentError):
    """The agent answered a request with ok=false (the message says why); the connection stays usable."""


class AgentClient:
    """A blocking connection to one agent. Thread-safe (one request at a time); a context manager."""

    def __init__(self, path: str, timeout: float = 5.0, pid: int | None = None) -> None:
        """Connect to the agent socket at `path` and exchange hellos; AgentError if that fails.

        The agent must be process `pid` (default: the pid in the socket's name, `<pid>.sock`).
        """
        self.path = path
        self.timeout = timeout
        self.expected_pid = pid if pid is not None else paths.pid_of_socket_name(os.path.basename(path))
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._connect()

    def _connect(self) -> None:
        path, timeout = self.path, self.timeout
        self._decoder = FrameDecoder(MAX_FRAME_BYTES)
        self._pending: list[dict[str, Any]] = []
        self._next_id = 1
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            try:
                self._sock.connect(path)
            except PermissionError:
                raise AgentError(f"permission denied connecting to the agent at {path}") from None
            except FileNotFoundError:
                raise AgentError(f"no agent socket at {path}") from None
            except ConnectionRefusedError:
                raise AgentError(f"the agent at {path} is not listening (stale socket?)") from None
            except OSError as exc:
                raise AgentError(f"cannot connect to the agent at {path}: {exc}") from None
            self._check_peer(self._sock)
            first = self._read_message(time.monotonic() + timeout)
            if first.get("type") == "error":
                raise AgentError(f"the agent refused the connection: {_error_message(first)}")
            try:
                self.hello: Hello = Hello.from_dict(first)
            except ProtocolError as exc:
                raise AgentError(f"incompatible agent at {path}: {exc}") from None
            if self.hello.role != "agent":
                raise AgentError(f"{path} answered as a {self.hello.role}, not an agent")
            self._send_bytes(encode(Hello(role="viewer", pid=os.getpid()).to_dict()))
        except BaseException:
            self.close()
            raise

    def _check_peer(self, sock: socket.socket) -> None:
        """The socket must be served by the expected process, running as that process's uid (or root)."""
        pid = self.expected_pid
        if pid is None:
            return
        try:
            peer_pid, peer_uid, _gid = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
        except OSError as exc:
            raise AgentError(f"cannot tell who serves {self.path}: {exc}") from None
        if peer_pid != pid:
            raise AgentError(
                f"refusing {self.path}: served by process {peer_pid}, not by process {pid} (a fake agent?)"
            )
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            raise AgentError(f"process {pid} is gone") from None
        if peer_uid not in (uid, 0):
            raise AgentError(
                f"refusing {self.path}: its agent runs as uid {peer_uid}, process {pid} as uid {uid}"
            )

    def _closed_by_agent(self) -> bool:
        """Whether the agent said something between requests: only an error frame before it closes (an
        idle viewer closed to make room, the agent stopping), or the end of the connection."""
        sock = self._sock
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._sock is None

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """Send one request and wait for its response; its result, or AgentError with the agent's message.

        A timeout or a broken connection closes the client (the stream may be mid-frame) and raises
        AgentError; a failed request (ok=false) leaves it usable.
        """
        with self._lock:
            if self._sock is None:
                raise AgentError("the connection to the agent is closed")
            if self._closed_by_agent():
                self.close()
                self._connect()
            request_id = self._next_id
            self._next_id += 1
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            try:
                frame = encode(Request(request_id, method, params or {}).to_dict())
            except ProtocolError as exc:
                raise RequestFailed(f"the request cannot be sent: {exc}") from None
            try:
                self._send_bytes(frame)
                while True:
                    message = self._read_message(deadline)
                    kind = message.get("type")
                    if kind == "error":
                        raise AgentError(f"the agent closed the connection: {_error_message(message)}")
                    if kind != "response":
                        continue
                    response = Response.from_dict(message)
                    if response.id != request_id:
                        continue  # answers are matched by id; anything else is not ours
                    if not response.ok:
                        raise RequestFailed(response.error or "request failed")
                    return response.result
            except RequestFailed:
                raise
            except AgentError:
                self.close()
                raise
            except ProtocolError as exc:
                self.close()
                raise AgentError(f"bad frame from the agent: {exc}") from None

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _send_bytes(self, frame: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise AgentError("the connection to the agent is closed")
        try:
            sock.sendall(frame)
        except OSError as exc:
            self.close()
            raise AgentError(f"lost the connection to the agent: {exc}") from None

    def _read_message(self, deadline: float) -> dict[str, Any]:
        """The next whole message, waiting until `deadline` (monotonic) at most."""
        while not self._pending:
            sock = self._sock
            if sock is None:
                raise AgentError("the connection to the agent is closed")
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise AgentError(f"no answer from the agent at {self.path} in time")
            sock.settimeout(left)
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                self.close()
                raise AgentError(f"no answer from the agent at {self.path} in time") from None
            except OSError as exc:
                self.close()
                raise AgentError(f"lost the connection to the agent: {exc}") from None
            if not data:
                self.close()
                raise AgentError("the agent closed the connection")
            try:
                self._pending.extend(self._decoder.feed(data))
            except ProtocolError as exc:
                self.close()
                raise AgentError(f"bad frame from the agent: {exc}") from None
        return self._pending.pop(0)


def _error_message(message: dict[str, Any]) -> str:
    try:
        return ErrorFrame.from_dict(message).message
    except ProtocolError:
        return "(no reason given)"


# -- merging and presenting stats -----------------------------------------------------------------------


def merge_stats(results: list[dict[str, Any]], *, query_sketches: bool = True) -> dict[str, Any]:
    """Merge the `stats` results of several processes into one of the same shape.

    Timings: sketches merged (bucket counts add; percentiles are never averaged), errors by type summed.
    Counters: values and rates summed. Gauges: summed across processes (a queue depth per worker adds up
    to the service's). span_s: the longest; gc: counts summed; overflow: numbers summed; queries: see
    `merge_queries` (`query_sketches` is its `sketches`). The result also says how many `processes` it
    merged.
    """
    if not results:
        return {
            "now": time.time(),
            "window_s": None,
            "span_s": 0.0,
            "timings": {},
            "counters": {},
            "gauges": {},
            "overflow": {},
            "gc": None,
            "queries": None,
            "processes": 0,
        }
    if len(results) == 1:
        return {**results[0], "processes": 1}
    sketches: dict[str, Sketch] = {}
    errors_by_type: dict[str, dict[str, int]] = {}
    counters: dict[str, dict[str, float]] = {}
    gauges: dict[str, float] = {}
    overflow: dict[str, Any] = {}
    gc_out: dict[str, Any] | None = None
    queries: list[dict[str, Any]] = []
    for stats in results:
        for name, timing in (stats.get("timings") or {}).items():
            try:
                sketch = Sketch.from_dict(timing.get("sketch"))
            except SketchError:
                continue
            sketches.setdefault(name, Sketch()).merge(sketch)
            by_type = errors_by_type.setdefault(name, {})
            for kind, n in (timing.get("errors_by_type") or {}).items():
                by_type[kind] = by_type.get(kind, 0) + n
        for name, counter in (stats.get("counters") or {}).items():
            into = counters.setdefault(name, {"value": 0, "rate_per_s": 0.0})
            into["value"] += counter.get("value") or 0
            into["rate_per_s"] += counter.get("rate_per_s") or 0.0
        for name, value in (stats.get("gauges") or {}).items():
            gauges[name] = gauges.get(name, 0.0) + value
        for key, value in (stats.get("overflow") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                overflow[key] = overflow.get(key, 0) + value
        gc_stats = stats.get("gc")
        if isinstance(gc_stats, dict):
            gc_out = _merge_gc(gc_out, gc_stats)
        q = stats.get("queries")
        if isinstance(q, dict):
            queries.append(q)
    return {
        "now": max(float(s.get("now") or 0.0) for s in results),
        "window_s": results[0].get("window_s"),
        "span_s": max(float(s.get("span_s") or 0.0) for s in results),
        "timings": {
            name: {"sketch": sk.to_dict(), "errors_by_type": errors_by_type.get(name, {})}
            for name, sk in sketches.items()
        },
        "counters": counters,
        "gauges": gauges,
        "overflow": overflow,
        "gc": gc_out,
        "queries": merge_queries(queries, sketches=query_sketches) if queries else None,
        "processes": len(results),
    }


def merge_queries(parts: list[dict[str, Any]], *, sketches: bool = True) -> dict[str, Any]:
    """Merge the `queries` objects (the SQLAlchemy hook's `query_stats`) of several processes.

    Per fingerprint the sketches are decoded once and merged, and every figure is computed from the
    merged sketch; rows and rows_counted add up; n_plus_one is true if any process saw it. Slow queries:
    all of them, newest first. Pool: sizes and rates summed, wait_p99_ms the worst of the processes
    (pools carry no sketch), pools listed.

    `sketches`: whether each merged row carries its merged sketch (`"sketch"`, encoded like an agent's);
    the viewer leaves them out, as it shows only the figures (and `snapshot --json` has no sketches), so
    that a tick never encodes a sketch just merged.
    """
    merged: dict[str, Sketch] = {}
    extra: dict[str, dict[str, Any]] = {}
    slow: list[Any] = []
    pools: list[dict[str, Any]] = []
    overflow: dict[str, Any] = {}
    for part in parts:
        for row in part.get("queries") or []:
            fp = row.get("fingerprint")
            try:
                sketch = Sketch.from_dict(row.get("sketch"))
            except SketchError:
                continue
            into = merged.get(fp)
            if into is None:
                merged[fp] = sketch  # decoded here: this merge's own, merged into in place
            else:
                into.merge(sketch)
            seen = extra.setdefault(
                fp, {"rows": 0, "rows_counted": 0, "n_plus_one": False, "n_plus_one_site": None, "routes": []}
            )
            routes = row.get("routes")
            if isinstance(routes, list):  # the workers' routes, merged (each worker's list is bounded)
                seen["routes"] = sorted({*seen["routes"], *(str(r) for r in routes)})
            seen["rows"] += row.get("rows") or 0
            seen["rows_counted"] += row.get("rows_counted", row.get("count") or 0) or 0
            seen["dialect"] = row.get("dialect")
            if seen.get("server_mean_ms") is None:  # the database's figure: the same for every worker
                seen["server_mean_ms"] = row.get("server_mean_ms")
            if row.get("n_plus_one"):
                seen["n_plus_one"] = True
                seen["n_plus_one_site"] = seen["n_plus_one_site"] or row.get("n_plus_one_site")
        slow.extend(part.get("slow_queries") or [])
        if isinstance(part.get("pool"), dict):
            pools.append(part["pool"])
        for key, value in (part.get("overflow") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                overflow[key] = overflow.get(key, 0) + value
    rows: list[dict[str, Any]] = []
    for fp, sketch in merged.items():
        p50, p95, p99 = sketch.quantiles((0.5, 0.95, 0.99))
        mean = sketch.mean
        merged_row: dict[str, Any] = {
            "fingerprint": fp,
            "count": sketch.count,
            "errors": sketch.errors,
            "total_ms": sketch.sum / NS_PER_MS,
            "mean_ms": None if mean is None else mean / NS_PER_MS,
            "p50_ms": None if p50 is None else p50 / NS_PER_MS,
            "p95_ms": None if p95 is None else p95 / NS_PER_MS,
            "p99_ms": None if p99 is None else p99 / NS_PER_MS,
            "max_ms": sketch.max / NS_PER_MS if sketch.count else None,
            "share_percent": 0.0,
            **extra[fp],
        }
        if sketches:
            merged_row["sketch"] = sketch.to_dict()
        rows.append(merged_row)
    grand = sum(r["total_ms"] for r in rows)
    for r in rows:
        r["share_percent"] = 100.0 * r["total_ms"] / grand if grand > 0 else 0.0
    rows.sort(key=lambda r: r["total_ms"], reverse=True)
    slow.sort(key=lambda q: q.get("at") or 0.0, reverse=True)
    return {
        "queries": rows,
        "slow_queries": slow,
        "pool": _merge_pools(pools),
        "overflow": overflow,
        "slow_ms": parts[0].get("slow_ms") if parts else None,
        "server_times": next((p["server_times"] for p in parts if p.get("server_times")), None),
    }


def _merge_pools(pools: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not pools:
        return None
    if len(pools) == 1:
        return pools[0]
    out: dict[str, Any] = {}
    for key in ("size", "checked_out", "overflow", "checkouts_per_s"):
        out[key] = sum(p.get(key) or 0 for p in pools)
    for key in ("wait_p99_ms", "wait_max_ms"):
        values = [p[key] for p in pools if p.get(key) is not None]
        out[key] = max(values) if values else None
    out["pools"] = [q for p in pools for q in p.get("pools") or []]
    return out


def _merge_gc(into: dict[str, Any] | None, gc_stats: dict[str, Any]) -> dict[str, Any]:
    if into is None:
        return {
            "collections": list(gc_stats.get("collections") or [0, 0, 0]),
            "collected": list(gc_stats.get("collected") or [0, 0, 0]),
            "uncollectable": gc_stats.get("uncollectable") or 0,
        }
    for key in ("collections", "collected"):
        into[key] = [a + b for a, b in zip(into[key], gc_stats.get(key) or [0, 0, 0], strict=False)]
    into["uncollectable"] += gc_stats.get("uncollectable") or 0
    return into


def timing_rows(stats: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The `timings` object of `perftop snapshot --json`: per name, count, errors, rate and quantiles in
    milliseconds, computed from the sketches (which hold nanoseconds); rate = count / span_s."""
    span = float(stats.get("span_s") or 0.0)
    rows: dict[str, dict[str, Any]] = {}
    for name, timing in (stats.get("timings") or {}).items():
        try:
            sketch = Sketch.from_dict(timing.get("sketch"))
        except SketchError:
            continue
        rows[name] = timing_row(sketch, span)
    return rows


def timing_row(sketch: Sketch, span: float) -> dict[str, Any]:
    """One row of `timing_rows`, from a decoded sketch (ns) and the span (s) its rate is taken over."""
    row: dict[str, Any] = {
        "count": sketch.count,
        "errors": sketch.errors,
        "rate_per_s": sketch.count / span if span > 0 else 0.0,
    }
    mean = sketch.mean
    row["mean_ms"] = None if mean is None else mean / NS_PER_MS
    row["min_ms"] = sketch.min / NS_PER_MS if sketch.count else None
    for (key, _q), value in zip(QUANTILES, sketch.quantiles(q for _k, q in QUANTILES), strict=True):
        row[key] = None if value is None else value / NS_PER_MS
    row["max_ms"] = sketch.max / NS_PER_MS if sketch.count else None
    return row
