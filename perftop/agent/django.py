"""The Django ORM hook: Django's queries in the same statistics as SQLAlchemy's (`perftop.agent.sqlalchemy`).

Standard library only at import; Django is reached through the modules the app already imported (the
post-import hook on `django.db` under `perftop run`, or `perftop.instrument_django()`).

How an execution is recorded:
- An execute wrapper (`connection.execute_wrappers`, as `connection.execute_wrapper()` installs one, and
  as django-debug-toolbar and Sentry do) goes on every connection, once: when `django.db.connections`
  makes a thread's connection of an alias (`ConnectionHandler.create_connection`, wrapped once), when a
  connection made otherwise opens (the `connection_created` signal: the statements Django runs while
  opening that first one are then missed), and on the calling thread's connections when instrumenting.
  It goes first in the list, so that a `with connection.execute_wrapper(...)` block of the app that is
  open meanwhile still pops its own; being outermost, it includes the other wrappers' own time.
- The dialect is the connection's `vendor` (postgresql, mysql for MariaDB too, sqlite); the source of a
  statement is its connection alias (`DjangoSource`), which is what EXPLAIN runs on.
- A query's time is the app's, as for SQLAlchemy: from the start of `cursor.execute()` until its rows are
  fetched, which is when Django closes the cursor (the ORM closes it once it has read the rows:
  `.get()`, `list(qs)`, `.count()`, and after the last chunk of `.iterator()`). `CursorWrapper.close` is
  wrapped once, on the class, to see that; a cursor the app never closes ends when it is freed or runs
  its next statement. So SQLite's scan during fetching and the chunks of a server-side cursor are inside
  the time; with `.iterator()`, so is what the app does between two chunks. Statements without rows and
  `executemany` end when `execute()` returns. A failed fetch is not counted as an error (a failed
  execute is).
- Rows: the DBAPI `cursor.rowcount` when known (psycopg, MySQLdb/PyMySQL; not SQLite's SELECT).
- N+1: executions per fingerprint are counted per connection of a thread, from the start of each request
  (Django's `request_started` / `request_finished`) or from the connection's opening outside requests.
- Values stay in the app unless `instrument(keep_values=True)`: EXPLAIN shows a plan with its literals
  redacted, as for SQLAlchemy.

EXPLAIN runs on a connection of its own, made for it from the alias's settings (`DjangoSource.explain`):
a new `DatabaseWrapper` that is not one of `django.db.connections`, so the app's per-thread connections,
their transactions and a connection pool (Django 5.1+ `OPTIONS["pool"]`, left out of the copy) are never
touched; it gets no execute wrapper, so perftop's statements are not recorded, and it is closed after.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from typing import Any

from perftop.agent import explain as _explain
from perftop.agent import sqlalchemy as stats
from perftop.agent.pump import log_once

__all__ = ["DjangoSource", "instrument", "is_instrumented", "new_unit_of_work"]

_perf = time.perf_counter_ns
_OPEN = "_perftop_open"
"""The attribute of a Django `CursorWrapper` holding its execution whose rows are still being read."""
_PRIVATE = "_perftop_private"
"""Set on perftop's own connections (EXPLAIN, catalog): no execute wrapper goes on them."""
_UID = "perftop.agent.django"

_sources: dict[str, DjangoSource] = {}
"""Connection alias -> its source (one per alias and process)."""
_keep_values = False
_instrumented = False
_connections: Any = None
"""`django.db.connections`, once instrumented."""
_quiet: set[int] = set()
"""Threads whose executions are not recorded (perftop's own, while it runs an EXPLAIN)."""


class DjangoSource(stats.Source):
    """A Django connection alias, where its statements ran: its dialect, and EXPLAIN on a connection of
    its own."""

    def __init__(self, alias: str, vendor: str) -> None:
        self.alias = alias
        self.dialect = vendor
        self.literal_dq = vendor == "mysql"
        """MySQL and MariaDB read `"..."` as a string unless ANSI_QUOTES is set (Django does not set it)."""
        self.keep_values = _keep_values

    def _private(self) -> Any:
        """A new DatabaseWrapper for the alias, outside `django.db.connections` and any pool."""
        from django.db.utils import load_backend

        settings = copy.deepcopy(_connections.settings[self.alias])
        options = settings.get("OPTIONS")
        if isinstance(options, dict):
            options.pop("pool", None)
        wrapper = load_backend(settings["ENGINE"]).DatabaseWrapper(settings, self.alias)
        setattr(wrapper, _PRIVATE, True)
        return wrapper

    def dbapi_connect(self) -> Any:
        wrapper = self._private()
        return wrapper.get_new_connection(wrapper.get_connection_params())

    def explain(
        self, statement: str, parameters: Any, analyze: bool, timeout_s: float, cancel: threading.Event
    ) -> tuple[Any, bool, dict[str, dict[str, Any]] | None]:
        wrapper = self._private()
        ident = threading.get_ident()
        _quiet.add(ident)
        try:
            wrapper.ensure_connection()
            mariadb = self.dialect == "mysql" and bool(wrapper.mysql_is_mariadb)
            plan, analyzed = self._run(wrapper, mariadb, statement, parameters, analyze, timeout_s, cancel)
            catalog = _catalog(wrapper, _explain.plan_tables(self.dialect, plan, statement))
        finally:
            with contextlib.suppress(Exception):
                wrapper.close()
            # Django's feature checks may open this thread's own connection of the alias (an atomic
            # block on `connections[alias]`): perftop's thread, so it is closed here.
            for connection in _connections.all(initialized_only=True):
                with contextlib.suppress(Exception):
                    connection.close()
            _quiet.discard(ident)
        return plan, analyzed, catalog

    def _run(
        self,
        wrapper: Any,
        mariadb: bool,
        statement: str,
        parameters: Any,
        analyze: bool,
        timeout_s: float,
        cancel: threading.Event,
    ) -> tuple[Any, bool]:
        """The EXPLAIN in a transaction rolled back (read-only on PostgreSQL, and for ANALYZE on MySQL and
        MariaDB), with a watcher that cancels it in the database when the viewer goes away or it
        outlives its timeout (`sqlalchemy.watch_explain`)."""
        dialect = self.dialect
        sql, analyzed = _explain.explain_sql(dialect, statement, analyze, mariadb, timeout_s)
        started = time.monotonic()
        done = threading.Event()
        watcher: threading.Thread | None = None
        try:
            if dialect == "postgresql":
                wrapper.set_autocommit(False)
            with wrapper.cursor() as cursor:
                if dialect == "postgresql":
                    cursor.execute("SET TRANSACTION READ ONLY")
                    cursor.execute(f"SET LOCAL statement_timeout = {stats.statement_timeout_ms(timeout_s)}")
                elif dialect == "mysql" and analyzed:
                    cursor.execute("START TRANSACTION READ ONLY")
                stopper = self._canceller(wrapper, cursor)
                deadline = started + timeout_s + stats.EXPLAIN_CANCEL_GRACE_S
                watcher = threading.Thread(
                    target=stats.watch_explain,
                    args=(stopper, cancel, done, deadline),
                    name="perftop-explain-watch",
                    daemon=True,
                )
                watcher.start()
                cursor.execute(sql, parameters)  # None: no placeholders read, as the app ran it
                rows = [tuple(row) for row in cursor.fetchall()]
                keys = [column[0] for column in cursor.description]
        except Exception as exc:
            elapsed = time.monotonic() - started
            database = "mariadb" if mariadb else dialect
            keep = self.keep_values
            raise stats.explain_failure(
                _driver_error(exc), database, analyzed, cancel, elapsed, timeout_s, keep
            ) from None
        finally:
            done.set()
            if watcher is not None:
                watcher.join(stats.EXPLAIN_CANCEL_JOIN_S)
            try:
                if dialect == "mysql" and analyzed:
                    with wrapper.cursor() as cursor:
                        cursor.execute("ROLLBACK")
                elif dialect == "postgresql":
                    wrapper.rollback()
            except Exception as exc:
                log_once("django-explain-rollback", "could not roll back after EXPLAIN", exc=exc)
        if cancel.is_set():
            raise stats.ExplainError("EXPLAIN cancelled: the viewer that asked for it went away")
        return _explain.plan_from_rows(dialect, keys, rows), analyzed

    def _canceller(self, wrapper: Any, cursor: Any) -> Any:
        """A function that cancels what `wrapper` runs, from another thread (None if none is known):
        SQLite's `interrupt()`; PostgreSQL's `pg_cancel_backend` and MySQL's `KILL QUERY`, sent on a
        DBAPI connection of their own."""
        if self.dialect == "sqlite":
            interrupt = getattr(wrapper.connection, "interrupt", None)
            return interrupt if callable(interrupt) else None
        if self.dialect == "postgresql":
            cursor.execute("SELECT pg_backend_pid()")
            command = f"SELECT pg_cancel_backend({int(cursor.fetchone()[0])})"
        elif self.dialect == "mysql":
            cursor.execute("SELECT CONNECTION_ID()")
            command = f"KILL QUERY {int(cursor.fetchone()[0])}"
        else:
            return None

        def stop() -> None:
            side = self.dbapi_connect()
            try:
                side_cursor = side.cursor()
                side_cursor.execute(command)
                with contextlib.suppress(Exception):
                    side_cursor.fetchall()
                with contextlib.suppress(Exception):
                    side.commit()
            finally:
                side.close()

        return stop


def _driver_error(exc: Exception) -> Exception:
    """The driver's own exception behind one Django re-raised as `django.db.utils.*` (which keeps its
    arguments but not its SQLSTATE), so that a read-only refusal is recognised."""
    cause = exc.__cause__
    if type(exc).__module__ == "django.db.utils" and isinstance(cause, Exception):
        return cause
    return exc


def _catalog(wrapper: Any, tables: list[str]) -> dict[str, dict[str, Any]] | None:
    """Columns and indexes (column lists, primary key included) of the tables a plan mentions, from
    Django's introspection on perftop's own connection."""
    if not tables:
        return {}
    try:
        out: dict[str, dict[str, Any]] = {}
        introspection = wrapper.introspection
        with wrapper.cursor() as cursor:
            for table in tables:
                try:
                    columns = [c.name for c in introspection.get_table_description(cursor, table)]
                    constraints = introspection.get_constraints(cursor, table)
                except Exception:
                    continue  # not a table introspection knows (a view, another schema): no validation
                indexes = [
                    [c for c in info["columns"] if c]
                    for info in constraints.values()
                    if (info.get("index") or info.get("primary_key") or info.get("unique"))
                    and info["columns"]
                ]
                out[table] = {"columns": columns, "indexes": indexes}
        return out
    except Exception as exc:
        log_once("django-catalog", "could not read the table catalog for EXPLAIN advice", exc=exc)
        return None


# -- the execute wrapper (hot path) ----------------------------------------------------------------------


def _source(connection: Any) -> DjangoSource:
    source = _sources.get(connection.alias)
    if source is None:
        source = _sources[connection.alias] = DjangoSource(connection.alias, str(connection.vendor))
    return source


def _execute_wrapper(execute: Any, sql: Any, params: Any, many: bool, context: dict[str, Any]) -> Any:
    """Time one execution of a Django connection (Django calls this with the next step `execute`)."""
    if _quiet and threading.get_ident() in _quiet:
        return execute(sql, params, many, context)
    t0 = _perf()
    try:
        result = execute(sql, params, many, context)
    except BaseException as exc:
        _record_failure(sql, params, many, context, _perf() - t0, exc)
        raise
    _record(sql, params, many, context, t0, _perf())
    return result


def _first(params: Any, many: bool) -> Any:
    """The parameters EXPLAIN would run with: an executemany's first set (when it is a sequence)."""
    if not many:
        return params
    return params[0] if isinstance(params, (list, tuple)) and params else None


def _record(sql: Any, params: Any, many: bool, context: dict[str, Any], t0: int, t1: int) -> None:
    try:
        if type(sql) is not str:
            sql = str(sql)  # a psycopg `sql.Composed` or similar: recorded as its text
        connection = context["connection"]
        cursor = context["cursor"]
        source = _source(connection)
        fp = stats.fingerprint_of(sql, source.literal_dq)
        raw = cursor.cursor
        rowcount = raw.rowcount
        state = cursor.__dict__
        earlier = state.pop(_OPEN, None)
        if earlier is not None:  # the cursor's previous statement: its rows were read before this ran
            stats.end_execution(earlier, t0)
        if many or raw.description is None:
            stats.record_execution(fp, t0, t1, rowcount, sql, _first(params, many), source)
        else:
            state[_OPEN] = stats.open_execution(fp, t0, rowcount, sql, params, source)
        stats.count_execution(id(connection), fp)
    except Exception as exc:
        log_once("django-record", "could not record a Django execution", exc=exc)


def _record_failure(
    sql: Any, params: Any, many: bool, context: dict[str, Any], dt: int, error: BaseException
) -> None:
    try:
        if type(sql) is not str:
            sql = str(sql)
        source = _source(context["connection"])
        fp = stats.fingerprint_of(sql, source.literal_dq)
        stats.record_failure(fp, dt, sql, _first(params, many), source, error)
    except Exception as exc:
        log_once("django-record", "could not record a Django execution", exc=exc)


def _hook_close(cursor_class: Any) -> None:
    """Wrap `CursorWrapper.close` once, on the class: the end of an execution whose rows were read.
    Django's class has no `close` of its own (its `__getattr__` hands out the DBAPI cursor's); the
    wrapper closes that cursor the same way and records the execution."""
    original = cursor_class.__dict__.get("close")
    if getattr(original, "_perftop", False):
        return

    def close(self: Any) -> Any:
        op = self.__dict__.pop(_OPEN, None)
        t1 = _perf()
        try:
            return self.cursor.close() if original is None else original(self)
        finally:
            if op is not None:
                try:
                    stats.end_execution(op, t1)
                except Exception as exc:
                    log_once("django-record", "could not record a Django execution", exc=exc)

    close._perftop = True  # type: ignore[attr-defined]
    if original is not None:
        close.__wrapped__ = original  # type: ignore[attr-defined]
    cursor_class.close = close


def _hook_connection(connection: Any) -> None:
    """Put the execute wrapper first on `connection`, once (not on perftop's own connections)."""
    if getattr(connection, _PRIVATE, False):
        return
    wrappers = connection.execute_wrappers
    if _execute_wrapper not in wrappers:
        wrappers.insert(0, _execute_wrapper)


def _hook_handler(handler_class: Any) -> None:
    """Wrap `ConnectionHandler.create_connection` once, on the class: each thread's connection of an
    alias gets the execute wrapper when Django makes it, before its first connect, so the statements
    Django runs while connecting (MySQL's isolation level) are recorded too."""
    original = handler_class.__dict__.get("create_connection")
    if original is None or getattr(original, "_perftop", False):
        return

    def create_connection(self: Any, alias: str) -> Any:
        connection = original(self, alias)
        try:
            _hook_connection(connection)
        except Exception as exc:
            log_once("django-connection", "could not hook a Django database connection", exc=exc)
        return connection

    create_connection._perftop = True  # type: ignore[attr-defined]
    create_connection.__wrapped__ = original  # type: ignore[attr-defined]
    create_connection.__doc__ = original.__doc__
    handler_class.create_connection = create_connection


def _on_connection_created(sender: Any, connection: Any = None, **extra: Any) -> None:
    """Django opened a database connection: hook it, and its N+1 count starts afresh."""
    try:
        if connection is not None:
            _hook_connection(connection)
            stats.forget_connection(id(connection))
    except Exception as exc:
        log_once("django-connection", "could not hook a Django database connection", exc=exc)


def _on_request_boundary(sender: Any, **extra: Any) -> None:
    """A request starts or ends: the N+1 counts of this thread's connections start afresh."""
    new_unit_of_work()


def new_unit_of_work() -> None:
    """A unit of work (a request, a Celery task) starts or ends in this thread: the N+1 counts of its
    connections start afresh, so that a query run once per task on a connection kept across tasks is
    not taken for a loop. Nothing before `instrument()`; never raises."""
    if not _instrumented:
        return
    try:
        for connection in _connections.all(initialized_only=True):
            stats.forget_connection(id(connection))
    except Exception as exc:
        log_once("django-request", "could not reset a request's N+1 counts", exc=exc)


def instrument(slow_ms: float = 100.0, keep_values: bool = False) -> None:
    """Record every query Django runs, in the same statistics as SQLAlchemy's (idempotent: a second call,
    or `perftop run` plus the app's own call, hooks each connection once; a later call updates the
    settings). keep_values=True is the app's opt-in to showing its statements' values. Never raises."""
    global _keep_values, _instrumented, _connections
    try:
        from django.core import signals
        from django.db import connections
        from django.db.backends import utils
        from django.db.backends.signals import connection_created
        from django.db.utils import ConnectionHandler

        _keep_values = bool(keep_values)
        for source in list(_sources.values()):
            source.keep_values = _keep_values
        stats.start_recording(slow_ms)
        _connections = connections
        _hook_close(utils.CursorWrapper)
        _hook_handler(ConnectionHandler)
        connection_created.connect(_on_connection_created, weak=False, dispatch_uid=_UID)
        signals.request_started.connect(_on_request_boundary, weak=False, dispatch_uid=_UID)
        signals.request_finished.connect(_on_request_boundary, weak=False, dispatch_uid=_UID)
        _instrumented = True
        _hook_open_connections(connections)
    except Exception as exc:
        log_once("django-instrument", "could not instrument Django's database layer", exc=exc)


def _hook_open_connections(connections: Any) -> None:
    """The calling thread's connections already made (an app instrumenting itself late); other threads'
    are hooked when they next connect."""
    from django.conf import settings

    if not settings.configured:
        return
    for connection in connections.all(initialized_only=True):
        _hook_connection(connection)


def is_instrumented() -> bool:
    """Whether `instrument()` has hooked Django's database layer."""
    return _instrumented
