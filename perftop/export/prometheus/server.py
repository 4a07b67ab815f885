"""The HTTP side of `perftop export`: the server answering `/metrics` and `/healthz`, bounded whatever
clients do, and the scheduler that collects and renders ahead of the scrapes (Prerenderer)."""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import re
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from perftop.export import protobuf, text
from perftop.export.notes import say
from perftop.export.prometheus.collector import HostCollector
from perftop.export.prometheus.families import NATIVE_FAMILY

if TYPE_CHECKING:
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector

log = logging.getLogger("perftop")

DEFAULT_LISTEN = "127.0.0.1:9464"
REQUEST_TIMEOUT_S = 5.0
"""How long a client may take to send its request's head, and then each write of the answer."""
MAX_HEAD_BYTES = 16384
"""A request head larger than this is refused (the connection closed)."""


class _Frozen:
    """The families of one past collection, for rendering them again in another format."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


class Rendering:
    """One scrape's answer: the body, its content type, and how it was made."""

    __slots__ = ("age_s", "ahead", "body", "content_type")

    def __init__(self, body: bytes, content_type: str, age_s: float, ahead: bool) -> None:
        self.body = body
        self.content_type = content_type
        self.age_s = age_s
        """Seconds since its collection began."""
        self.ahead = ahead
        """Rendered in the background before the scrape asked, rather than for it."""


class Prerenderer:
    """Answers scrapes from a collection rendered ahead of them in a background thread, so that a
    scrape is answered at once whatever the size of the host (20 agents x 100 timings take a few
    tenths of a second of CPU to collect and write, more on a loaded machine).

    - `every_s` > 0 (`--refresh S`): a collection every S seconds; scrapes get the latest one.
    - `every_s` == 0 (the default): paced by the scrapes. After each scrape the next collection is timed
      to end just before the next scrape is due (the median of the last gaps between scrapes, less
      the last collection's duration and a margin), so nothing is collected when nobody scrapes. A scrape
      is answered from a collection made since the previous scrape was answered and at most `max_age`
      old; else (the first scrape, an irregular scraper) from one begun within the last second, or one
      collected for it.
    - `always_fresh` (`--refresh 0`), or a scrape with `Cache-Control: no-cache`: from a collection begun
      after the scrape arrived. Such collections are shared by the scrapes waiting for them and start at
      least ON_REQUEST_GAP_S apart, so no client can make the exporter hammer the agents.

    Only the formats scrapers asked for are rendered ahead (the first scrape of a format renders it).
    """

    MARGIN_S = 0.5
    JITTER = 0.05
    """A paced collection should end MARGIN_S plus JITTER of the gap before the next scrape is due."""
    ON_REQUEST_GAP_S = 1.0
    """Collections made for a request (`Cache-Control: no-cache`, a first or irregular scrape, `--refresh
    0`) start at least this long apart, and requests arriving together share one: whatever clients send,
    every agent is asked for its stats at most about once a second, plus the collections made ahead."""
    MIN_PACED_GAP_S = 0.5
    """Collections made ahead of scrapes start at least this long after the previous collection."""

    def __init__(self, collector: HostCollector, every_s: float = 0.0, always_fresh: bool = False) -> None:
        """`always_fresh` (`--refresh 0`): every scrape is answered as one with `Cache-Control: no-cache`."""
        self.collector = collector
        self.every_s = every_s
        self.always_fresh = always_fresh
        self._forcing = False
        """A collection for requests is under way."""
        self._forced_at = -math.inf
        """When the latest collection for requests began (monotonic)."""
        self._cond = threading.Condition()
        self._families: list[Metric] | None = None
        self._bodies: dict[str, bytes] = {}
        self._encoders: dict[str, Callable[[Collector], bytes]] = {}
        self._started_at = 0.0
        """When the latest collection began (monotonic)."""
        self._generation = 0
        """Counts collections; a paced scrape wants one newer than what the previous scrape got."""
        self._served = 0
        self._took_s = 0.0
        self._scrapes: deque[float] = deque(maxlen=6)
        self._due: float | None = None
        self._running = 0
        """Collections under way."""
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="perftop-export-prerender", daemon=True)

    def start(self) -> None:
        if self.every_s > 0:
            self._due = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout=30)

    @property
    def max_age_s(self) -> float:
        """The oldest collection a scrape may be answered from."""
        if self.every_s > 0:
            return math.inf
        gap = self._typical_gap()
        jitter = self.JITTER * gap if gap is not None else 0.0
        return 2 * (self._took_s + jitter) + self.MARGIN_S + 1.0

    def _typical_gap(self) -> float | None:
        """The median gap between the last scrapes' arrivals, None before two (lock held): the median, so
        that one stray scrape (a curl by hand) does not upset the rhythm."""
        gaps = sorted(b - a for a, b in pairwise(self._scrapes))
        return gaps[len(gaps) // 2] if gaps else None

    def _collect(self, encoders: dict[str, Callable[[Collector], bytes]]) -> None:
        """Collect now and render every format in `encoders`; the result becomes the latest."""
        started = time.monotonic()
        with self._cond:
            self._running += 1
        try:
            families = list(self.collector.collect())
            bodies = {ctype: encode(_Frozen(families)) for ctype, encode in encoders.items()}
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()
        with self._cond:
            if started >= self._started_at:
                self._families, self._bodies, self._started_at = families, bodies, started
                self._generation += 1
                self._took_s = time.monotonic() - started
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (self._due is None or time.monotonic() < self._due):
                    self._cond.wait(None if self._due is None else max(0.0, self._due - time.monotonic()))
                if self._stopping:
                    return
                self._due = time.monotonic() + self.every_s if self.every_s > 0 else None
                encoders = dict(self._encoders)
            try:
                self._collect(encoders)
            except Exception as exc:  # one line, not a traceback: the next collection may well succeed
                log.warning("perftop: export: collecting failed: %s: %s", type(exc).__name__, exc)

    def _schedule(self, now: float) -> None:
        """Paced mode: time the next collection from the gaps between the last scrapes' arrivals, `now`
        being this one's (lock held)."""
        gap = self._typical_gap()
        if gap is not None:
            due = now + gap * (1 - self.JITTER) - self._took_s - self.MARGIN_S
            # Scrapes in a tight loop do not make collections back to back: two a second at most (one
            # would delay the first paced collection after an on-request one past the next scrape).
            self._due = max(due, self._started_at + self.MIN_PACED_GAP_S)
            self._cond.notify_all()

    def _usable(self, now: float) -> bool:
        """The latest collection may answer a scrape that arrived at `now` (lock held)."""
        newer = self._generation > (0 if self.every_s > 0 else self._served)
        return newer and now - self._started_at <= self.max_age_s

    def body(self, accept: str, fresh: bool = False) -> Rendering:
        """The answer to a scrape whose Accept header is `accept`; `fresh` insists on a new collection."""
        encoder, ctype = choose_encoder(accept)
        now = time.monotonic()
        fresh = fresh or self.always_fresh
        with self._cond:
            self._encoders.setdefault(ctype, encoder)
            if self.every_s > 0 and not fresh:
                self._cond.wait_for(lambda: self._generation > 0 or self._stopping, timeout=60)
            if not fresh and self._running and not self._usable(now):
                seen = self._generation  # one is under way (made ahead, or for another scrape): wait for it
                self._cond.wait_for(
                    lambda: self._generation != seen or not self._running or self._stopping, timeout=60
                )
            usable = not fresh and self._usable(now)
            body = self._bodies.get(ctype) if usable else None
            families = self._families if usable else None
            generation, started = self._generation, self._started_at
        ahead = usable
        if usable and body is None and families is not None:
            body = encoder(_Frozen(families))
            with self._cond:
                if self._generation == generation:
                    self._bodies[ctype] = body
        if body is None:
            body, generation, started = self._on_request(encoder, ctype, now if fresh else now - 1.0)
            ahead = False
        with self._cond:
            self._served = max(self._served, generation)
            if self.every_s == 0 and not self.always_fresh:
                self._scrapes.append(now)
                self._schedule(now)
        return Rendering(body, ctype, max(0.0, time.monotonic() - started), ahead)

    def _on_request(
        self, encoder: Callable[[Collector], bytes], ctype: str, since: float
    ) -> tuple[bytes, int, float]:
        """(body, generation, start) of a collection begun at `since` or later: the latest if it did,
        else the one under way for other requests, else a new one, though never sooner than
        ON_REQUEST_GAP_S after the previous one made for requests."""
        collected = False
        while True:
            with self._cond:
                self._encoders.setdefault(ctype, encoder)
                while True:
                    latest = self._families is not None and self._started_at >= since
                    if latest or collected or self._stopping:
                        families, generation, started = self._families, self._generation, self._started_at
                        body = self._bodies.get(ctype) if latest else None
                        break
                    wait = self._forced_at + self.ON_REQUEST_GAP_S - time.monotonic()
                    if not self._forcing and wait <= 0:
                        self._forcing, self._forced_at = True, time.monotonic()
                        encoders = dict(self._encoders)
                        families = None
                        break
                    self._cond.wait(None if self._forcing else wait)
            if families is not None or collected or self._stopping:
                break
            try:
                self._collect(encoders)
            finally:
                with self._cond:
                    self._forcing = False
                    self._cond.notify_all()
            collected = True
        if body is None:  # a collection that did not render this format (or none, when stopping)
            body = encoder(self.collector if families is None else _Frozen(families))
        return body, generation, started


def _is_native(fam: Metric) -> bool:
    return fam.name == NATIVE_FAMILY


def choose_encoder(accept: str) -> tuple[Callable[[Collector], bytes], str]:
    """The writer and content type a scrape's Accept header asks for: Prometheus' protobuf (native
    histograms included) if it offers it, else prometheus_client's choice of text format (written by
    text.py's faster equivalent where there is one), whose OpenMetrics 2.0 carries the native histograms
    and the others leave them out."""
    if protobuf.accepts(accept):
        return (lambda registry: protobuf.encode(registry.collect())), protobuf.CONTENT_TYPE
    from prometheus_client.exposition import choose_encoder as text_encoder

    encoder, ctype = text_encoder(accept)
    encoder = text.faster(encoder) or encoder
    version = re.search(r"version=(\d+)", ctype)
    if ctype.startswith("application/openmetrics-text") and version and int(version.group(1)) >= 2:
        return encoder, ctype

    def without_native(registry: Collector) -> bytes:
        return encoder(_Frozen([fam for fam in registry.collect() if not _is_native(fam)]))

    return without_native, ctype


# -- HTTP ------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """`/metrics` (text format, OpenMetrics or protobuf, by the Accept header; gzipped if the scraper
    accepts it, as Prometheus does) and `/healthz`. One request per connection, each socket operation
    bounded by REQUEST_TIMEOUT_S, so that no client holds a worker for long."""

    server: MetricsServer
    protocol_version = "HTTP/1.1"
    timeout = REQUEST_TIMEOUT_S

    def setup(self) -> None:
        """The request's head was read by the server already: read it from memory, write to the socket."""
        super().setup()
        self.rfile.close()
        self.rfile = io.BytesIO(self.server.heads.pop(self.connection, b""))

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path in ("/metrics", "/"):
            accept = self.headers.get("Accept", "")
            fresh = "no-cache" in self.headers.get("Cache-Control", "")
            try:
                rendering = self.server.prerender.body(accept, fresh)
            except Exception as exc:
                self.server.note(f"collecting failed: {type(exc).__name__}: {exc}")
                self._send(500, b"collecting failed; see the exporter's log\n", "text/plain; charset=utf-8")
                return
            gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
            body = rendering.body
            self._send(
                200,
                gzip.compress(body, compresslevel=1) if gzipped else body,
                rendering.content_type,
                gzipped,
                {
                    "X-Perftop-Data-Age": f"{rendering.age_s:.3f}",
                    "X-Perftop-Rendered": "ahead" if rendering.ahead else "on-request",
                },
            )
        else:
            self._send(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

    def _send(
        self,
        code: int,
        body: bytes,
        content_type: str,
        gzipped: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.close_connection = True
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a scrape every 15 s is not news."""


class MetricsServer(HTTPServer):
    """The exporter's HTTP server, bounded whatever clients do.

    An accepted connection waits in a selector (one thread for all of them) until its request starts to
    arrive; only then does one of WORKERS threads read and answer it. A connection silent for
    REQUEST_TIMEOUT_S is closed, and beyond MAX_WAITING silent connections the oldest is closed; beyond
    MAX_QUEUED connections waiting for a worker, a new one is closed at once. So 1000 half-open
    connections cost 1000 file descriptors for a few seconds at most, never 1000 threads, and a client
    that resets its connection costs no traceback (at most one line, for what is not a network error).

    `refresh_s`: 0 (the default) answers scrapes from collections paced by the scrapes, S > 0 from one
    every S seconds, None collects for each scrape (see Prerenderer)."""

    WORKERS = 8
    MAX_WAITING = 256
    MAX_QUEUED = 64
    request_queue_size = 128
    """The listen backlog: a burst of connections waits in the kernel, not refused (5 by default)."""

    def __init__(
        self, address: tuple[str, int], collector: HostCollector, refresh_s: float | None = 0.0
    ) -> None:
        from prometheus_client.registry import CollectorRegistry

        self.prerender = Prerenderer(collector, max(0.0, refresh_s or 0.0), always_fresh=refresh_s is None)
        self._waiting: dict[socket.socket, tuple[Any, float, bytearray]] = {}
        """Connections whose request's head has not fully arrived: (address, deadline, bytes so far)."""
        self.heads: dict[socket.socket, bytes] = {}
        """Whole request heads, for the handler about to answer them."""
        self._queued = 0
        self._lock = threading.Lock()
        self._closing = False
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._incoming: deque[tuple[socket.socket, Any]] = deque()
        self._workers = ThreadPoolExecutor(self.WORKERS, thread_name_prefix="perftop-export-http")
        self._noted: set[str] = set()
        self.address_family = _family(address[0])
        super().__init__(address, _Handler)  # on failure, server_close() runs and the OSError propagates
        self.collector = collector
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._waiter = threading.Thread(target=self._wait_loop, name="perftop-export-accept", daemon=True)
        self._waiter.start()
        self.prerender.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the accepted connection to the selector thread; it dispatches it once it has a request."""
        with self._lock:
            self._incoming.append((request, client_address))
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _wait_loop(self) -> None:
        """The selector thread: it must outlive anything one connection does."""
        while not self._closing:
            try:
                self._wait_once()
            except Exception as exc:
                self.note(f"the connection loop recovered from {type(exc).__name__}: {exc}")
                time.sleep(0.1)

    def _wait_once(self) -> None:
        """Read what the readable connections sent, take in the new ones, close the silent ones."""
        waiting = self._waiting
        for key, _ in self._selector.select(timeout=1.0):
            sock = key.fileobj
            if sock is self._wake_r:
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
                continue
            assert isinstance(sock, socket.socket)
            self._read_head(sock)
        with self._lock:
            incoming, self._incoming = self._incoming, deque()
        deadline = time.monotonic() + REQUEST_TIMEOUT_S
        for sock, address in incoming:
            try:
                sock.setblocking(False)
                self._selector.register(sock, selectors.EVENT_READ)
            except (OSError, ValueError):
                self.shutdown_request(sock)
                continue
            waiting[sock] = (address, deadline, bytearray())
        now = time.monotonic()
        stale = [sock for sock, (_, due, _) in waiting.items() if due <= now]
        stale += list(waiting)[: max(0, len(waiting) - len(stale) - self.MAX_WAITING)]
        for sock in dict.fromkeys(stale):
            self._drop(sock)

    def _read_head(self, sock: socket.socket) -> None:
        """Read what arrived of a request's head; dispatch it once whole (a GET has no body)."""
        address, _, head = self._waiting[sock]
        try:
            data = sock.recv(MAX_HEAD_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        head += data
        if not data or len(head) > MAX_HEAD_BYTES:
            self._drop(sock)
        elif b"\r\n\r\n" in head or b"\n\n" in head:
            self._selector.unregister(sock)
            del self._waiting[sock]
            sock.setblocking(True)
            self._dispatch(sock, address, bytes(head))

    def _drop(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)
        self._waiting.pop(sock, None)
        self.shutdown_request(sock)

    def _dispatch(self, sock: socket.socket, address: Any, head: bytes) -> None:
        with self._lock:
            full = self._queued >= self.MAX_QUEUED
            if not full:
                self._queued += 1
        if full or self._closing:
            self.shutdown_request(sock)
            return
        self._workers.submit(self._serve, sock, address, head)

    def _serve(self, sock: socket.socket, address: Any, head: bytes) -> None:
        try:
            with self._lock:
                self.heads[sock] = head
            self.finish_request(sock, address)
        except OSError:
            pass  # a client that reset, went away or stalled: not worth a line
        except Exception as exc:
            self.note(f"a request from {address[0]} failed: {type(exc).__name__}: {exc}")
        finally:
            self.shutdown_request(sock)
            with self._lock:
                self.heads.pop(sock, None)
                self._queued -= 1

    def note(self, message: str) -> None:
        """One line on stderr, once per distinct message (a client cannot flood the log)."""
        with self._lock:
            if message in self._noted or len(self._noted) >= 100:
                return
            self._noted.add(message)
        say(f"export: {message}")

    def server_close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        waiter = getattr(self, "_waiter", None)
        if waiter is not None:
            waiter.join(timeout=5)
        for sock in list(self._waiting) + [sock for sock, _ in self._incoming]:
            self.shutdown_request(sock)
        self._waiting.clear()
        self._workers.shutdown(wait=False, cancel_futures=True)
        self.prerender.stop()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        super().server_close()


def _family(host: str) -> Any:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
