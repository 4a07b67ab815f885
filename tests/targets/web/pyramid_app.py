"""A plain Pyramid app that knows nothing of perftop (served by gunicorn)."""

from pyramid.config import Configurator
from pyramid.response import Response


def user(request: object) -> Response:
    return Response(f"hello {request.matchdict['username']}")  # type: ignore[attr-defined]


def boom(request: object) -> Response:
    raise RuntimeError("boom")


with Configurator() as config:
    config.add_route("user", "/user/{username}")
    config.add_view(user, route_name="user")
    config.add_route("boom", "/boom")
    config.add_view(boom, route_name="boom")
    app = config.make_wsgi_app()
