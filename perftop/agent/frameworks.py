"""Zero-code request timing: wraps the web frameworks' application classes when a program imports them.

`perftop run` puts a post-import hook in the program (see `perftop/launch/_bootstrap/sitecustomize.py`);
when the program imports one of `HOOKS`' modules, `instrument_module` patches that framework's application
class so that every request is timed exactly as `perftop.wsgi.Middleware` / `perftop.asgi.Middleware`
would (one timing per route template, status classes, errors), with no change to the app. That is how the
established instrumenters (opentelemetry-instrument, ddtrace-run) do it: patching the framework, not the
server, covers every server (gunicorn, uvicorn, hypercorn, waitress, `flask run`, `runserver`).

The route template is read while the request is live, from the framework's own router, and left in the
WSGI environ or ASGI scope under `ROUTE_KEY`, where the middleware reads it when the request ends (Flask
clears its request from the environ before the response body is closed, so reading it then fails). Every
wrapper is idempotent: the outermost one marks the request (`TIMED_KEY`) and the inner ones (an app that
also wraps itself in the middleware, a mounted sub-application) pass it through untimed.

Celery's modules (`celery.signals`, `billiard.pool`) are handed on to `perftop.agent.tasks`, which times
tasks by name.

Standard library only; the frameworks are reached through the modules handed in, never imported here.
A failure is logged once and never reaches the app.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType
from typing import Any

from perftop.agent.pump import log_once
from perftop.agent.routes import ROUTE_KEY, TIMED_KEY

__all__ = ["HOOKS", "ROUTE_KEY", "TIMED_KEY", "django_template", "instrument_module"]


_PATCHED = "_perftop_patched"
_RE_GROUP = re.compile(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>(?:[^()]|\([^()]*\))*\)")
_DJANGO_VAR = re.compile(r"<(?:[^<>:]+:)?([A-Za-z_][A-Za-z0-9_]*)>")


def django_template(route: str) -> str:
    """A Django `ResolverMatch.route` as a template: `user/<str:username>/` -> `/user/{username}/`;
    a regex route (`^articles/(?P<year>[0-9]{4})/$`) with its named groups as `{year}`."""
    if "(?P<" in route or route.startswith("^") or route.endswith("$"):
        text = _RE_GROUP.sub(lambda m: "{" + m.group(1) + "}", route).replace("^", "").replace("$", "")
        text = text.replace("\\", "")
    else:
        text = _DJANGO_VAR.sub(lambda m: "{" + m.group(1) + "}", route)
    return text if text.startswith("/") else "/" + text


def _patch(cls: Any, name: str, make: Callable[[Any], Any]) -> None:
    """Replace `cls.name` by `make(original)`, once (a second import hook or a reload changes nothing)."""
    original = cls.__dict__.get(name)
    if original is None or getattr(original, _PATCHED, False):
        return
    wrapper = make(original)
    setattr(wrapper, _PATCHED, True)
    setattr(wrapper, "__wrapped__", original)  # noqa: B010 - functools.wraps would copy too much
    setattr(cls, name, wrapper)


def _wsgi_class(cls: Any) -> None:
    """Time every request a WSGI application class answers (its `__call__`)."""
    from perftop.agent import wsgi

    def make(original: Any) -> Any:
        def __call__(self: Any, environ: dict[str, Any], start_response: Any) -> Any:
            return wsgi.timed(wsgi.ZERO_CODE_ROUTES, original, self, environ, start_response)

        return __call__

    _patch(cls, "__call__", make)


def _asgi_class(cls: Any) -> None:
    """Time every HTTP request an ASGI application class answers (its `__call__`)."""
    from perftop.agent import asgi

    def make(original: Any) -> Any:
        async def __call__(self: Any, scope: Any, receive: Any, send: Any) -> None:
            await asgi.timed(asgi.ZERO_CODE_ROUTES, original, self, scope, receive, send)

        return __call__

    _patch(cls, "__call__", make)


def _flask(module: ModuleType) -> None:
    from perftop.agent.wsgi import hook_flask_routes

    _wsgi_class(module.Flask)
    hook_flask_routes(module)


def _django_base(module: ModuleType) -> None:
    """Note each Django request's resolved route (`resolve_request`, Django 3.1+)."""

    def make(original: Any) -> Any:
        def resolve_request(self: Any, request: Any) -> Any:
            match = original(self, request)
            try:
                route = getattr(match, "route", None)
                template = django_template(route) if route else None
                if template is None and getattr(match, "view_name", None):
                    template = "{view:" + str(match.view_name) + "}"
                if template is not None:
                    target = getattr(request, "scope", None)
                    if not isinstance(target, dict):
                        target = request.META
                    target[ROUTE_KEY] = template
            except Exception as exc:
                log_once("django-route", "could not read a Django request's route", exc=exc)
            return match

        return resolve_request

    _patch(module.BaseHandler, "resolve_request", make)


def _django_wsgi(module: ModuleType) -> None:
    _wsgi_class(module.WSGIHandler)


def _django_asgi(module: ModuleType) -> None:
    _asgi_class(module.ASGIHandler)


def _django_db(module: ModuleType) -> None:
    """Django's ORM: its queries in the query statistics (`perftop.agent.django`)."""
    from perftop.agent import autostart

    autostart.instrument_django()


def _starlette(module: ModuleType) -> None:
    _asgi_class(module.Starlette)


def _bottle(module: ModuleType) -> None:
    _wsgi_class(module.Bottle)


def _pyramid(module: ModuleType) -> None:
    """Pyramid's Router: timed, and each request's matched route pattern noted once it is routed."""
    router = module.Router
    _wsgi_class(router)

    def make(original: Any) -> Any:
        def handle_request(self: Any, request: Any) -> Any:
            try:
                return original(self, request)
            finally:
                try:
                    pattern = getattr(getattr(request, "matched_route", None), "pattern", None)
                    if isinstance(pattern, str) and pattern:
                        request.environ[ROUTE_KEY] = pattern if pattern.startswith("/") else "/" + pattern
                except Exception as exc:
                    log_once("pyramid-route", "could not read a Pyramid request's route", exc=exc)

        return handle_request

    _patch(router, "handle_request", make)


def _falcon(module: ModuleType) -> None:
    """Falcon's WSGI App: timed, and each request's `uri_template` noted when its responder is found."""
    app = module.App
    _wsgi_class(app)

    def make(original: Any) -> Any:
        def _get_responder(self: Any, req: Any) -> Any:
            found = original(self, req)
            try:
                template = found[3] if isinstance(found, tuple) and len(found) >= 4 else None
                if isinstance(template, str) and template:
                    req.env[ROUTE_KEY] = template
            except Exception as exc:
                log_once("falcon-route", "could not read a Falcon request's URI template", exc=exc)
            return found

        return _get_responder

    _patch(app, "_get_responder", make)


def _celery(module: ModuleType) -> None:
    from perftop.agent import tasks

    tasks.instrument_celery(module)


def _billiard(module: ModuleType) -> None:
    from perftop.agent import tasks

    tasks.instrument_billiard(module)


HOOKS: dict[str, Callable[[ModuleType], None]] = {
    "flask": _flask,
    "django.core.handlers.base": _django_base,
    "django.core.handlers.wsgi": _django_wsgi,
    "django.core.handlers.asgi": _django_asgi,
    "django.db": _django_db,
    "starlette.applications": _starlette,
    "bottle": _bottle,
    "pyramid.router": _pyramid,
    "falcon.app": _falcon,
    "celery.signals": _celery,
    "billiard.pool": _billiard,
}
"""Module name -> what to patch once the program has imported it."""


def instrument_module(name: str, module: ModuleType) -> None:
    """Patch the framework that `module` (just imported as `name`) belongs to. Never raises."""
    hook = HOOKS.get(name)
    if hook is None:
        return
    try:
        hook(module)
    except Exception as exc:
        log_once(f"framework-{name}", f"could not instrument {name} for request timing", exc=exc)
