"""A one-file Django project that knows nothing of perftop: `application` (WSGI), `asgi_application` (ASGI),
and `python django_app.py runserver ...` (manage.py)."""

import sys

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseNotFound
from django.urls import include, path, re_path

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="perftop-test-not-secret",
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={},
    LOGGING_CONFIG=None,
)


def user(request: HttpRequest, username: str) -> HttpResponse:
    return HttpResponse(f"hello {username}")


def order(request: HttpRequest, order_id: int) -> HttpResponse:
    return HttpResponse(str(order_id))


def article(request: HttpRequest, year: str) -> HttpResponse:
    return HttpResponse(year)


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom")


def missing(request: HttpRequest, thing: str) -> HttpResponse:
    return HttpResponseNotFound("no")


api = [path("orders/<int:order_id>/", order)]
urlpatterns = [
    path("user/<str:username>/", user),
    path("api/", include(api)),
    re_path(r"^articles/(?P<year>[0-9]{4})/$", article),
    path("boom/", boom),
    path("missing/<thing>/", missing),
]

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
asgi_application = get_asgi_application()

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
