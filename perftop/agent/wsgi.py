"""WSGI middleware: times every request by route template and counts responses by status class.

    app = perftop.agent.wsgi.Middleware(app)            # timings named "http GET /orders/{id}"

A request is timed from the call until the server closes the response body (the body is sent), under
its route TEMPLATE, never its raw URL, so the number of metrics stays bounded: the template comes from
`route_for(environ)` if given, else from the framework (Flask/Werkzeug's `url_rule`, Bottle's route,
Pyramid's route pattern, `wsgiorg.routing_args`), else from the path with numeric, UUID and hex
segments replaced by `{id}`. Unmatched requests answered 404 share one name. Responses are counted per
status class (`http 2xx` ... `http 5xx`); a 5xx response or an exception counts as an error of the
route's timing (exceptions by type, 5xx responses as `ServerError`). Names past the recorder's cap fold
into its overflow metric.

Standard library only, like the agent; the app is never slowed by more than a few dict lookups, and a
failure in here is logged once and never reaches the app.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from perftop.agent import routes as requests
from perftop.agent.pump import log_once
from perftop.agent.recorder import MAX_PENDING, Timing, count, registry
from perftop.agent.routes import ROUTE_KEY, TIMED_KEY

__all__ = ["NOT_FOUND_ROUTE", "Middleware", "ServerError", "normalize_path", "timed"]

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
"""Methods named as they are; any other is named `OTHER` (a client picks the method, not the app)."""
NOT_FOUND_ROUTE = "{not_found}"
"""The route of a 404 answer with no framework route: unmatched URLs are unbounded, so they share one."""
MAX_SEGMENTS = 12
"""Path segments kept by the fallback normalizer; deeper paths end in `/...`."""
MAX_CACHED_NAMES = 4096

_pc = time.perf_counter_ns
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_HEX = re.compile(r"^(0x)?[0-9a-fA-F]{8,}$")
_NUMBER = re.compile(r"^[+-]?[0-9]+([.,][0-9]+)?$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,}$")
_WERKZEUG_VAR = re.compile(r"<(?:[^<>:]+(?:\([^<>]*\))?:)?([A-Za-z_][A-Za-z0-9_]*)>")
_BOTTLE_VAR = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)(?::[^<>]*)?>")

RouteFor = Callable[[Any], "str | None"]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ServerError(Exception):
    """Stands for a 5xx response in a timing's errors by type, when the app raised nothing."""


_SERVER_ERROR = ServerError()


def _is_id(segment: str) -> bool:
    if not segment:
        return False
    if segment[0].isdigit() and _NUMBER.match(segment):
        return True
    if len(segment) >= 8 and (
        _UUID.match(segment) or (_HEX.match(segment) and any(c.isdigit() for c in segment))
    ):
        return True
    return (
        bool(_TOKEN.match(segment))
        and any(c.isdigit() for c in segment)
        and any(c.isalpha() for c in segment)
    )


def normalize_path(path: str) -> str:
    """The path with numeric, UUID, hex and token-like segments replaced by `{id}` (and depth capped)."""
    if not path:
        return "/"
    segments = path.split("/")
    out = ["{id}" if _is_id(s) else s for s in segments[: MAX_SEGMENTS + 1]]
    if len(segments) > MAX_SEGMENTS + 1:
        out.append("...")
    return "/".join(out)


def template_from_params(path: str, params: Mapping[str, Any] | None) -> str | None:
    """The route template rebuilt from a matched path and its parameters: `/orders/42` with `{"id": 42}`
    gives `/orders/{id}`. None when no segment matches a parameter. Other id-like segments are normalized."""
    if not params:
        return None
    by_value: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, (str, int, float)) or type(value).__name__ == "UUID":
            by_value.setdefault(str(value), str(key))
    if not by_value:
        return None
    hit = False
    out: list[str] = []
    for segment in path.split("/"):
        name = by_value.get(segment)
        if name is None and "%" in segment:
            from urllib.parse import unquote

            name = by_value.get(unquote(segment))
        if name is not None:
            out.append("{" + name + "}")
            hit = True
        else:
            out.append("{id}" if _is_id(segment) else segment)
    return "/".join(out) if hit else None


def werkzeug_template(rule: str) -> str:
    """`/orders/<int:order_id>` (Werkzeug/Flask) as `/orders/{order_id}`."""
    return _WERKZEUG_VAR.sub(lambda m: "{" + m.group(1) + "}", rule)


def bottle_template(rule: str) -> str:
    """`/orders/<order_id:int>` (Bottle) as `/orders/{order_id}`."""
    return _BOTTLE_VAR.sub(lambda m: "{" + m.group(1) + "}", rule)


def _wsgi_framework_route(environ: Mapping[str, Any]) -> str | None:
    """The route template the framework matched, from what it left in the environ; None if none."""
    request = environ.get("werkzeug.request")
    rule = getattr(getattr(request, "url_rule", None), "rule", None)
    if isinstance(rule, str):
        return werkzeug_template(rule)
    route = environ.get("bottle.route")
    rule = getattr(route, "rule", None)
    if isinstance(rule, str):
        return bottle_template(rule)
    route = environ.get("bfg.routes.route")
    pattern = getattr(route, "pattern", None)
    if isinstance(pattern, str):
        return pattern if pattern.startswith("/") else "/" + pattern
    args = environ.get("wsgiorg.routing_args")
    if isinstance(args, (tuple, list)) and len(args) == 2 and isinstance(args[1], Mapping):
        return template_from_params(_wsgi_path(environ), args[1])
    return None


def _wsgi_path(environ: Mapping[str, Any]) -> str:
    path = f"{environ.get('SCRIPT_NAME', '')}{environ.get('PATH_INFO', '')}"
    return path or "/"


class Routes:
    """Names and records requests for one middleware; shared by the WSGI and ASGI middlewares."""

    def __init__(self, name_prefix: str, route_for: RouteFor | None) -> None:
        self.prefix = name_prefix
        self.route_for = route_for
        self._metrics: dict[tuple[str, str], Timing] = {}
        self._class_names = {n: f"{name_prefix} {n}xx" for n in range(1, 6)}

    def route(
        self, target: Any, framework: Callable[[Any], str | None], path: str, status: int | None
    ) -> str:
        """The route template of a finished request: route_for, else the one a framework hook noted while
        the request was live, else what the framework left in the request, else the normalized path."""
        if self.route_for is not None:
            try:
                route = self.route_for(target)
                if route:
                    return str(route)
            except Exception as exc:
                log_once("route-for", "the route_for callable of a perftop middleware raised", exc=exc)
        noted = target.get(ROUTE_KEY) if isinstance(target, Mapping) else None
        if isinstance(noted, str) and noted:
            return noted
        try:
            route = framework(target)
            if route:
                return route
        except Exception as exc:
            log_once("route-framework", "could not read the framework's route of a request", exc=exc)
        if status == 404:
            return NOT_FOUND_ROUTE
        return normalize_path(path)

    def timing(self, method: str, route: str) -> Timing:
        key = (method, route)
        metric = self._metrics.get(key)
        if metric is None:
            metric = registry.timing(f"{self.prefix} {method} {route}")
            if len(self._metrics) < MAX_CACHED_NAMES:
                self._metrics[key] = metric
        return metric

    def record(
        self,
        method: str,
        route: str,
        status: int | None,
        duration_ns: int,
        exc: BaseException | None,
        trace: requests.Trace | None = None,
        queue_ms: float | None = None,
    ) -> None:
        """One finished request: its duration (an error for 5xx or an exception) and its status class;
        with its `trace`, its SQL time and queries for the route's breakdown."""
        try:
            method = method if method in METHODS else "OTHER"
            metric = self.timing(method, route)
            if exc is not None:
                metric.error(duration_ns, exc)
                status = 500 if status is None or status < 500 else status
            elif status is None or status >= 500:
                metric.error(duration_ns, _SERVER_ERROR)
                status = 500 if status is None else status
            elif len(metric.buf) < MAX_PENDING:
                metric.append(duration_ns)
            else:
                metric.dropped += 1
            if trace is not None:
                requests.end(trace, f"{method} {route}", duration_ns, status >= 500, queue_ms)
            name = self._class_names.get(status // 100)
            if name is not None:
                count(name)
        except Exception as exc2:
            log_once("middleware-record", "could not record a web request", exc=exc2)


def _note_routes_of_loaded_frameworks() -> None:
    """Let a hand-added middleware see Flask's route: Flask drops its request from the environ before the
    body is closed, so the route must be noted while the request is live (a signal handler does that)."""
    import sys

    flask = sys.modules.get("flask")
    if flask is not None:
        try:
            hook_flask_routes(flask)
        except Exception as exc:
            log_once("flask-route", "could not hook Flask's request_started signal", exc=exc)


def hook_flask_routes(module: Any) -> None:
    """Note each Flask request's URL rule when the request starts (Flask's `request_started` signal)."""
    signal = getattr(module, "request_started", None)
    if signal is None or getattr(module, "_perftop_routes", False):
        return
    request = module.request

    def started(sender: Any, **extra: Any) -> None:
        try:
            rule = request.url_rule
            if rule is not None:
                request.environ[ROUTE_KEY] = werkzeug_template(rule.rule)
        except Exception as exc:
            log_once("flask-route", "could not read a Flask request's URL rule", exc=exc)

    signal.connect(started, weak=False)
    module._perftop_routes = True


def _status_code(status: Any) -> int | None:
    try:
        return int(str(status).split(None, 1)[0])
    except (ValueError, IndexError):
        return None


QUEUE_METRIC = "http.queue"
"""The timing of the time requests waited before the app got them (from X-Request-Start)."""
MAX_QUEUE_S = 3600.0
"""A queue wait beyond this (or negative: clocks apart) is a wrong header, not a wait."""


def queue_wait(header: str, now: float) -> float | None:
    """Record the wait of a request whose proxy stamped `X-Request-Start: t=<epoch>` (nginx: seconds with
    milliseconds; Heroku, New Relic: milliseconds or microseconds, told apart by their size); the wait in
    milliseconds, None for a header that is not a time."""
    try:
        text = header.strip()
        if text.startswith("t="):
            text = text[2:]
        stamp = float(text)
        if stamp > 1e14:
            stamp /= 1e6
        elif stamp > 1e11:
            stamp /= 1e3
        wait = now - stamp
        if 0.0 <= wait <= MAX_QUEUE_S:
            timing = registry.timings.get(QUEUE_METRIC) or registry.timing(QUEUE_METRIC)
            if len(timing.buf) < MAX_PENDING:
                timing.append(int(wait * 1e9))
            else:
                timing.dropped += 1
            return wait * 1000
    except (ValueError, OverflowError):
        return None
    except Exception as exc:
        log_once("queue-wait", "could not record a request's queue wait", exc=exc)
    return None


ZERO_CODE_ROUTES = Routes("http", None)
"""The routes of the requests timed by `perftop run`'s framework hooks (perftop.agent.frameworks)."""


class Middleware:
    """Wraps a WSGI app: times each request by route template, counts responses by status class.

    `name_prefix` starts every metric name ("http GET /orders/{id}"); `route_for(environ)` may return the
    route template of a request (None: perftop finds it); it is called once the app has answered.
    """

    def __init__(self, app: WSGIApp, name_prefix: str = "http", route_for: RouteFor | None = None) -> None:
        self.app = app
        self.routes = Routes(name_prefix, route_for)
        _note_routes_of_loaded_frameworks()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        return timed(self.routes, self.app, None, environ, start_response)


def timed(
    routes: Routes,
    app: Callable[..., Iterable[bytes]],
    owner: Any,
    environ: dict[str, Any],
    start_response: Any,
) -> Iterable[bytes]:
    """Answer a request with `app` (called as `app(owner, environ, start_response)` when `owner` is not
    None: an unbound framework method), timing it under `routes`; a request already timed by an outer
    wrapper (`TIMED_KEY` in the environ) is passed through."""
    if environ.get(TIMED_KEY):
        return app(environ, start_response) if owner is None else app(owner, environ, start_response)
    environ[TIMED_KEY] = True
    trace = requests.begin()
    t0 = _pc()
    stamp = environ.get("HTTP_X_REQUEST_START")
    queue_ms = None if stamp is None else queue_wait(str(stamp), time.time())
    state: list[int | None] = [None]

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        state[0] = _status_code(status)
        if exc_info is None:
            return start_response(status, headers)
        return start_response(status, headers, exc_info)

    try:
        result = app(environ, start) if owner is None else app(owner, environ, start)
    except BaseException as exc:
        _finish(routes, environ, state[0], t0, exc, trace, queue_ms)
        raise
    return _Body(result, routes, environ, state, t0, trace, queue_ms)


def _finish(
    routes: Routes,
    environ: dict[str, Any],
    status: int | None,
    t0: int,
    exc: BaseException | None,
    trace: requests.Trace,
    queue_ms: float | None,
) -> None:
    duration = _pc() - t0
    try:
        route = routes.route(environ, _wsgi_framework_route, _wsgi_path(environ), status)
        method = str(environ.get("REQUEST_METHOD", "GET"))
    except Exception as exc2:
        log_once("middleware-route", "could not name a web request", exc=exc2)
        return
    routes.record(method, route, status, duration, exc, trace, queue_ms)


class _Body:
    """The app's response body, passed through; the request is recorded when the server closes it."""

    __slots__ = ("_done", "_environ", "_queue_ms", "_result", "_routes", "_state", "_t0", "_trace")

    def __init__(
        self,
        result: Iterable[bytes],
        routes: Routes,
        environ: dict[str, Any],
        state: list[int | None],
        t0: int,
        trace: requests.Trace,
        queue_ms: float | None,
    ) -> None:
        self._result = result
        self._trace = trace
        self._queue_ms = queue_ms
        self._routes = routes
        self._environ = environ
        self._state = state
        self._t0 = t0
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._result
        except GeneratorExit:
            raise
        except BaseException as exc:
            self._record(exc)
            raise

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                close()
        except BaseException as exc:
            self._record(exc)
            raise
        self._record(None)

    def _record(self, exc: BaseException | None) -> None:
        if not self._done:
            self._done = True
            _finish(self._routes, self._environ, self._state[0], self._t0, exc, self._trace, self._queue_ms)
