"""ASGI middleware: times every HTTP request by route template and counts responses by status class.

    app = perftop.agent.asgi.Middleware(app)            # timings named "http GET /orders/{id}"

A request is timed from the call until its response is complete (the `http.response.body` message
without `more_body`), so background work after the response is not counted. The route TEMPLATE comes
from `route_for(scope)` if given, else from the framework: `scope["route"]` (FastAPI/Starlette Route:
`path_format` or `path`), `scope["path_template"]`, or the path rebuilt from `scope["path_params"]`;
else from the path with numeric, UUID and hex segments replaced by `{id}`. Everything else is as in
`perftop.agent.wsgi`: status classes as counters, 5xx and exceptions as errors, the recorder's cap on names.
Lifespan and websocket scopes pass through untouched.

Standard library only; a failure in here is logged once and never reaches the app.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from perftop.agent import routes as requests
from perftop.agent.pump import log_once
from perftop.agent.routes import TIMED_KEY
from perftop.agent.wsgi import RouteFor, Routes, queue_wait, template_from_params

__all__ = ["Middleware", "timed"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
"""Any ASGI application (loosely typed: frameworks type their scope as a dict, a MutableMapping...)."""

_pc = time.perf_counter_ns
_COMPLETE = frozenset({"http.response.pathsend", "http.response.zerocopysend"})
"""Extension messages that send the whole remaining body at once."""


def _asgi_framework_route(scope: Scope) -> str | None:
    """The route template the framework matched, from what its router left in the scope; None if none."""
    route = scope.get("route")
    for attr in ("path_format", "path"):
        value = getattr(route, attr, None)
        if isinstance(value, str) and value:
            return value
    template = scope.get("path_template")
    if isinstance(template, str) and template:
        return template
    params = scope.get("path_params")
    if isinstance(params, dict) and params:
        return template_from_params(_asgi_path(scope), params)
    return None


def _asgi_path(scope: Scope) -> str:
    path = scope.get("path")
    return path if isinstance(path, str) and path else "/"


class Middleware:
    """Wraps an ASGI app: times each HTTP request by route template, counts responses by status class.

    `name_prefix` starts every metric name ("http GET /orders/{id}"); `route_for(scope)` may return the
    route template of a request (None: perftop finds it); it is called once the response is complete.
    """

    def __init__(self, app: ASGIApp, name_prefix: str = "http", route_for: RouteFor | None = None) -> None:
        self.app = app
        self.routes = Routes(name_prefix, route_for)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await timed(self.routes, self.app, None, scope, receive, send)


ZERO_CODE_ROUTES = Routes("http", None)
"""The routes of the requests timed by `perftop run`'s framework hooks (perftop.agent.frameworks)."""


async def timed(
    routes: Routes,
    app: Callable[..., Awaitable[None]],
    owner: Any,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Answer an ASGI request with `app` (called as `app(owner, scope, receive, send)` when `owner` is not
    None: an unbound framework method), timing HTTP requests under `routes`; lifespan and websocket scopes,
    and requests already timed by an outer wrapper (`TIMED_KEY` in the scope), pass through."""
    if scope.get("type") != "http" or scope.get(TIMED_KEY):
        if owner is None:
            await app(scope, receive, send)
        else:
            await app(owner, scope, receive, send)
        return
    scope[TIMED_KEY] = True
    trace = requests.begin()
    t0 = _pc()
    queue_ms = None
    for key, value in scope.get("headers") or ():
        if key == b"x-request-start":
            queue_ms = queue_wait(value.decode("latin-1"), time.time())
            break
    status: int | None = None
    done = False

    def finish(exc: BaseException | None) -> None:
        nonlocal done
        if done:
            return
        done = True
        duration = _pc() - t0
        try:
            route = routes.route(scope, _asgi_framework_route, _asgi_path(scope), status)
            method = str(scope.get("method", "GET"))
        except Exception as exc2:
            log_once("middleware-route", "could not name a web request", exc=exc2)
            return
        routes.record(method, route, status, duration, exc, trace, queue_ms)

    async def timed_send(message: Message) -> None:
        nonlocal status
        kind = message.get("type")
        if kind == "http.response.start":
            try:
                status = int(message.get("status", 0)) or None
            except (TypeError, ValueError):
                status = None
        await send(message)
        if (kind == "http.response.body" and not message.get("more_body", False)) or kind in _COMPLETE:
            finish(None)

    try:
        if owner is None:
            await app(scope, receive, timed_send)
        else:
            await app(owner, scope, receive, timed_send)
    except BaseException as exc:
        finish(exc)
        raise
    finish(None)
