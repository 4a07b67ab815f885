"""An app with perftop's agent and SQLAlchemy hook, for the tests that plant secrets and look for them.

Usage: python tests/targets/secret_app.py SOCKET_DIR URL [URL2] [--keep-values]

Every URL gets an engine, instrumented through the public API (`perftop.instrument_sqlalchemy`, with
slow_ms=0 so every execution, failed ones included, goes to the slow list; keep_values as given). A second
URL makes an app with two engines (the EXPLAIN engine-choice test).

Protocol: tests/targets/json_lines.py (one JSON object per line on stdin, one reply per line on stdout;
the first line out is {"ready": true, "pid": PID}).
  {"cmd": "sql", "sql": S, "params": {..} | null, "engine": 0 | 1, "fetch": bool}
        -> {"ok": true, "result": rows or rowcount} or {"ok": false, "type": NAME, "error": MSG, ...}
        one transaction, committed unless it fails; params null runs S with no parameter parsing
  {"cmd": "sql_timed_out", "sql": S, "params": {..}, "timeout_ms": N}
        -> S under a statement timeout of N ms (PostgreSQL statement_timeout, MariaDB max_statement_time):
           it fails, and its fingerprint is recorded with these parameters (a long sleep that the test
           then EXPLAIN ANALYZEs); the exception's type name
  {"cmd": "exit"}
"""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import perftop
from tests.targets.json_lines import serve


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    keep_values = "--keep-values" in sys.argv
    socket_dir, urls = args[0], args[1:]
    perftop.start(name="secret-app", socket_dir=socket_dir)
    import sqlalchemy as sa

    engines = [sa.create_engine(url) for url in urls]
    for engine in engines:
        perftop.instrument_sqlalchemy(engine, slow_ms=0, keep_values=keep_values)
    serve(
        {
            "sql": lambda **request: run_sql(engines[request.get("engine", 0)], request),
            "sql_timed_out": lambda **request: run_timed_out(engines[0], request),
        }
    )
    for engine in engines:
        engine.dispose()


def run_sql(engine: Any, request: dict[str, Any]) -> Any:
    params = request.get("params")
    with engine.begin() as conn:
        if params is None:
            result = conn.execution_options(no_parameters=True).exec_driver_sql(request["sql"])
        else:
            import sqlalchemy as sa

            result = conn.execute(sa.text(request["sql"]), params)
        if request.get("fetch"):
            return [list(row) for row in result.all()]
        return result.rowcount


def run_timed_out(engine: Any, request: dict[str, Any]) -> str:
    import sqlalchemy as sa

    timeout_ms = int(request["timeout_ms"])
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SET LOCAL statement_timeout = {timeout_ms}")
            else:
                conn.exec_driver_sql(f"SET SESSION max_statement_time = {timeout_ms / 1000}")
            try:
                conn.execute(sa.text(request["sql"]), request.get("params") or {}).all()
            finally:
                if engine.dialect.name != "postgresql":
                    conn.exec_driver_sql("SET SESSION max_statement_time = 0")
    except sa.exc.DBAPIError as exc:
        return type(exc.orig).__name__
    raise AssertionError("the statement did not time out")


if __name__ == "__main__":
    main()
