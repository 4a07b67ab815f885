"""A one-file Django project with models, which knows nothing of perftop (unless PERFTOP_TEST_SELF=1): it
counts and times its own queries and answers them with each response, as the oracle of perftop's figures.
`application` (WSGI), `asgi_application` (ASGI), `python django_orm_app.py runserver ...` (manage.py).

Environment: PERFTOP_TEST_DJANGO_DB (`postgresql`, `mariadb`, or `sqlite:PATH`), PERFTOP_TEST_SUFFIX (its
tables are `pt_author_SUFFIX` and `pt_book_SUFFIX`, so parallel runs do not collide), PERFTOP_TEST_SELF=1
(the app starts the agent and calls `perftop.instrument_django()` itself, as an app without `perftop run`).
`python django_orm_app.py setup` creates and fills the tables; `drop` drops them; `fetch` times a SQLite
statement whose rows are computed while they are fetched and prints the app's timing and perftop's
(PERFTOP_TEST_SELF=1) as JSON; `explain-limits` tries EXPLAIN's timeout, cancel and read-only guard.
"""

import json
import os
import sys
import time
from typing import Any

from django.conf import settings

KIND = os.environ["PERFTOP_TEST_DJANGO_DB"]
SUFFIX = os.environ["PERFTOP_TEST_SUFFIX"]
AUTHORS = 8
BOOKS_PER_AUTHOR = 12

if KIND == "postgresql":
    DATABASE = {"ENGINE": "django.db.backends.postgresql", "NAME": "test", "USER": "postgres"}
    DATABASE.update(HOST="127.0.0.1", PORT="5432")
elif KIND == "mariadb":
    import pymysql

    pymysql.install_as_MySQLdb()
    DATABASE = {"ENGINE": "django.db.backends.mysql", "NAME": "test", "USER": "root"}
    DATABASE.update(HOST="127.0.0.1", PORT="3306")
else:
    DATABASE = {"ENGINE": "django.db.backends.sqlite3", "NAME": KIND.split(":", 1)[1]}

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="perftop-test-not-secret",
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={"default": DATABASE},
    LOGGING_CONFIG=None,
    USE_TZ=False,
    TEMPLATES=[
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "DIRS": [os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")],
        }
    ],
)

import django  # noqa: E402

django.setup()

if os.environ.get("PERFTOP_TEST_SELF") == "1":
    import perftop

    perftop.start()
    perftop.instrument_django()

from django.db import connection, models  # noqa: E402
from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.shortcuts import render  # noqa: E402
from django.urls import path  # noqa: E402


class Author(models.Model):
    name = models.CharField(max_length=50)

    class Meta:
        app_label = "perftop_test"
        db_table = f"pt_author_{SUFFIX}"


class Book(models.Model):
    author = models.ForeignKey(Author, on_delete=models.DO_NOTHING, db_constraint=False, db_index=False)
    title = models.CharField(max_length=50)

    class Meta:
        app_label = "perftop_test"
        db_table = f"pt_book_{SUFFIX}"


class Ledger:
    """The app's own record of its queries: an execute wrapper of its own (each statement's text and the
    time of its `execute()`), and its timing of each ORM call that runs them (execute, fetch, the ORM's
    own work and a connection's opening included)."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.execute_ms = 0.0
        self.sql_ms = 0.0

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.statements.append(sql)
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.execute_ms += (time.perf_counter() - t0) * 1000

    def timed(self, call: Any) -> Any:
        t0 = time.perf_counter()
        result = call()
        self.sql_ms += (time.perf_counter() - t0) * 1000
        return result

    def answer(self, **extra: Any) -> JsonResponse:
        timing = {"execute_ms": self.execute_ms, "sql_ms": self.sql_ms}
        return JsonResponse({"statements": self.statements, **timing, **extra})


def books(request: HttpRequest, author_id: int) -> JsonResponse:
    """The author's books, then each book's author looked up one by one: 1 + 12 queries (an N+1)."""
    ledger = Ledger()
    with connection.execute_wrapper(ledger):
        found = ledger.timed(lambda: list(Book.objects.filter(author_id=author_id).order_by("id")))
        names = [ledger.timed(lambda b=b: Author.objects.get(pk=b.author_id).name) for b in found]  # N+1
    return ledger.answer(names=names)


def count(request: HttpRequest) -> JsonResponse:
    ledger = Ledger()
    with connection.execute_wrapper(ledger):
        n = ledger.timed(lambda: Book.objects.filter(title__startswith="secret-").count())
    return ledger.answer(count=n)


def rename(request: HttpRequest, author_id: int) -> JsonResponse:
    ledger = Ledger()
    with connection.execute_wrapper(ledger):
        n = ledger.timed(lambda: Author.objects.filter(pk=author_id).update(name="renamed-secret-value"))
    return ledger.answer(updated=n)


def shelf(request: HttpRequest, author_id: int) -> HttpResponse:
    """The author's books in a template that reads each book's author: 1 + 12 queries, the N+1 in the
    template's loop (tests/targets/web/templates/shelf.html)."""
    return render(request, "shelf.html", {"books": Book.objects.filter(author_id=author_id).order_by("id")})


def ping(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"statements": []})


urlpatterns = [
    path("ping/", ping),
    path("books/<int:author_id>/", books),
    path("count/", count),
    path("rename/<int:author_id>/", rename),
    path("shelf/<int:author_id>/", shelf),
]

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
asgi_application = get_asgi_application()


def setup() -> None:
    with connection.schema_editor() as editor:
        editor.create_model(Author)
        editor.create_model(Book)
    for a in range(1, AUTHORS + 1):
        author = Author.objects.create(name=f"author-{a}")
        Book.objects.bulk_create(
            [Book(author_id=author.pk, title=f"secret-{a}-{n}") for n in range(BOOKS_PER_AUTHOR)]
        )


def drop() -> None:
    with connection.schema_editor() as editor:
        editor.delete_model(Book)
        editor.delete_model(Author)


FETCH_SQL = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) "
    "SELECT x FROM c WHERE x % 1000000 = 1"
)
"""SQLite finds its first row at once and computes the rest while the rows are fetched."""


def fetch() -> None:
    with connection.cursor() as cursor:
        t0 = time.perf_counter()
        cursor.execute(FETCH_SQL)
        t1 = time.perf_counter()
        rows = cursor.fetchall()
        t2 = time.perf_counter()
    t3 = time.perf_counter()
    from perftop.agent.sqlalchemy import query_stats

    recorded = {q["fingerprint"]: q for q in query_stats(None)["queries"]}
    timing = {"execute_ms": (t1 - t0) * 1000, "fetch_ms": (t2 - t1) * 1000, "closed_ms": (t3 - t0) * 1000}
    timing["rows"] = len(rows)
    sys.stdout.write(json.dumps({**timing, "recorded": recorded}) + "\n")
    sys.stdout.flush()


def explain_limits() -> None:
    """(PERFTOP_TEST_SELF=1, PostgreSQL or MariaDB) EXPLAIN ANALYZE of statements the app ran, through
    the agent's explain (as a viewer's request reaches it, in a thread of its own): one outliving its
    timeout, one cancelled by its viewer going away, one that would write (PostgreSQL); then the app's
    own connection still works. Prints each outcome as JSON."""
    import threading

    from perftop.agent.sqlalchemy import ExplainError, explain, query_stats

    sleep = "SELECT pg_sleep(%s)" if KIND == "postgresql" else "SELECT SLEEP(%s)"
    with connection.cursor() as cursor:
        cursor.execute(sleep, [4])  # what EXPLAIN ANALYZE runs again
        if KIND == "postgresql":
            cursor.execute("SELECT nextval(%s)", [f"{Author._meta.db_table}_id_seq"])
    fps = [q["fingerprint"] for q in query_stats(None)["queries"]]
    sleep_fp = next(fp for fp in fps if "sleep" in fp.lower())
    out: dict[str, Any] = {}

    def ask(name: str, params: dict[str, Any], cancel_after: float | None = None) -> None:
        cancel = threading.Event()
        if cancel_after is not None:
            threading.Timer(cancel_after, cancel.set).start()
        t0 = time.monotonic()
        try:
            explain({**params, "analyze": True, "confirm": True}, cancel)
            out[name] = {"error": None}
        except ExplainError as exc:
            out[name] = {"error": str(exc)}
        out[name]["seconds"] = time.monotonic() - t0

    def in_thread(*args: Any) -> None:
        worker = threading.Thread(target=ask, args=args)
        worker.start()
        worker.join()

    in_thread("timeout", {"fingerprint": sleep_fp, "timeout_s": 0.3})
    in_thread("cancel", {"fingerprint": sleep_fp, "timeout_s": 60}, 0.5)
    if KIND == "postgresql":
        in_thread("refused", {"fingerprint": next(fp for fp in fps if "nextval" in fp)})
    out["app_still_works"] = Author.objects.count()
    out["recorded"] = {q["fingerprint"]: q["count"] for q in query_stats(None)["queries"]}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    command = sys.argv[1]
    commands = {"setup": setup, "drop": drop, "fetch": fetch, "explain-limits": explain_limits}
    if command in commands:
        commands[command]()
    else:
        from django.core.management import execute_from_command_line

        execute_from_command_line(sys.argv)
