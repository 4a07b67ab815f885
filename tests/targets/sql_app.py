"""An instrumented SQLAlchemy app for the SQL hook tests: runs workloads and reports perftop's view of them.

Usage: python tests/targets/sql_app.py URL SUFFIX [--pool-size N] [--max-overflow N] [--slow-ms MS]
                                                   [--threshold N] [--engine-first]

perftop's hook is installed for every engine BEFORE the engine exists (`instrument()` with no engine),
then once more for the engine itself, which must change nothing (the hook is idempotent). With
--engine-first the order is reversed: the engine, then every engine (which takes the engine's over).

Protocol (tests/targets/json_lines.py): one JSON object per line on stdin, one reply per line on stdout:
  {"cmd": NAME, ...args}  ->  {"ok": true, "result": ...} or {"ok": false, "error": MSG, "type": NAME,
                                                              "value_error": bool}
Commands: setup, workload, n_plus_one, find_by_email, exec, fail, hold, release, contend,
scalar, concurrent, fork_child, stats, explain, teardown, exit. Lines marked `# SLOW HERE` and
`# N+1 HERE` are the call sites the tests expect perftop to report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from perftop.agent import sqlalchemy as hook
from tests.targets.json_lines import serve

SLOW_SQL = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) SELECT count(*) FROM c"
)


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        settings = {"slow_ms": args.slow_ms, "n_plus_one_threshold": args.threshold}
        if not args.engine_first:
            hook.instrument(None, **settings)
        import sqlalchemy as sa
        from sqlalchemy.orm import registry, relationship

        self.sa = sa
        self.engine = sa.create_engine(args.url, pool_size=args.pool_size, max_overflow=args.max_overflow)
        hook.instrument(self.engine, **settings)
        if args.engine_first:
            hook.instrument(None, **settings)
        self.dialect = self.engine.dialect.name
        s = args.suffix
        self.names = {"items": f"items_{s}", "users": f"users_{s}", "orders": f"orders_{s}"}
        meta = sa.MetaData()
        self.items = sa.Table(
            self.names["items"],
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("email", sa.String(100)),
            sa.Column("name", sa.String(100)),
            sa.Column("n", sa.Integer),
        )
        self.users = sa.Table(
            self.names["users"],
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(100)),
        )
        self.orders = sa.Table(
            self.names["orders"],
            meta,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("user_id", sa.Integer, sa.ForeignKey(self.users.c.id)),
            sa.Column("amount", sa.Integer),
        )
        self.meta = meta

        class User:
            orders: list[Any]

        class Order:
            pass

        mapper = registry()
        mapper.map_imperatively(User, self.users, properties={"orders": relationship(Order, lazy="select")})
        mapper.map_imperatively(Order, self.orders)
        self.User = User
        self.held: list[Any] = []

    # -- commands -------------------------------------------------------------------------------------

    def setup(self, rows: int = 2000) -> int:
        sa = self.sa
        self.meta.drop_all(self.engine)
        self.meta.create_all(self.engine)
        with self.engine.begin() as conn:
            conn.execute(
                self.items.insert(),
                [
                    {"id": i, "email": f"user{i}@example.com", "name": f"name {i}", "n": i % 7}
                    for i in range(1, rows + 1)
                ],
            )
            conn.execute(self.users.insert(), [{"id": i, "name": f"user {i}"} for i in range(1, 31)])
            conn.execute(
                self.orders.insert(),
                [{"id": i, "user_id": i % 30 + 1, "amount": i} for i in range(1, 301)],
            )
        with self.engine.begin() as conn:
            for table in self.names.values():
                if self.dialect == "postgresql":
                    conn.exec_driver_sql(f"ANALYZE {table}")
                elif self.dialect in ("mysql", "mariadb"):
                    conn.exec_driver_sql(f"ANALYZE TABLE {table}")
        return int(self._scalar(sa.select(sa.func.count()).select_from(self.items)))

    def workload(self, fast: int = 100, slow: int = 3) -> dict[str, int]:
        sa = self.sa
        fast_stmt = sa.select(self.items.c.name).where(self.items.c.id == sa.bindparam("id"))
        for i in range(fast):
            with self.engine.connect() as conn:
                conn.execute(fast_stmt, {"id": i % 50 + 1}).all()
        for _ in range(slow):
            with self.engine.connect() as conn:
                conn.execute(sa.text(SLOW_SQL)).all()  # SLOW HERE
        return {"fast": fast, "slow": slow}

    def n_plus_one(self, users: int = 15, few: int = 3) -> int:
        sa = self.sa
        from sqlalchemy.orm import Session

        total = 0
        with Session(self.engine) as session:
            found = session.scalars(sa.select(self.User).order_by(self.users.c.id).limit(users)).all()
            for user in found:
                total += len(user.orders)  # N+1 HERE
        few_stmt = sa.select(self.orders.c.amount).where(self.orders.c.id == sa.bindparam("id"))
        with self.engine.connect() as conn:
            for i in range(few):
                conn.execute(few_stmt, {"id": i + 1}).all()
        return total

    def find_by_email(self, email: str, times: int = 3) -> int:
        sa = self.sa
        stmt = sa.select(self.items.c.id, self.items.c.name).where(self.items.c.email == email)
        found = 0
        for _ in range(times):
            with self.engine.connect() as conn:
                found = len(conn.execute(stmt).all())
        return found

    def exec(self, sql: str, params: dict[str, Any] | None = None) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(self.sa.text(sql), params or {}).rowcount)

    def fail(self) -> dict[str, str]:
        try:
            with self.engine.connect() as conn:
                conn.execute(self.sa.text(f"SELECT * FROM missing_{self.names['items']}"))
        except Exception as exc:
            return {"type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc)}
        raise AssertionError("the failing statement did not fail")

    def hold(self, n: int) -> int:
        for _ in range(n):
            conn = self.engine.connect()
            conn.exec_driver_sql("SELECT 1")
            self.held.append(conn)
        return len(self.held)

    def release(self) -> int:
        while self.held:
            self.held.pop().close()
        return 0

    def contend(self, hold_ms: float) -> dict[str, float]:
        """With the pool exhausted by `hold`, one more thread asks for a connection; a held one is
        given back after `hold_ms` (the app keeps it that long on purpose: the wait perftop must see)."""
        result: dict[str, float] = {}

        def taker() -> None:
            t0 = time.perf_counter()
            with self.engine.connect() as conn:
                result["waited_ms"] = (time.perf_counter() - t0) * 1000
                conn.exec_driver_sql("SELECT 1")

        thread = threading.Thread(target=taker)
        thread.start()
        time.sleep(hold_ms / 1000)
        self.held.pop().close()
        thread.join(timeout=30)
        return result

    def concurrent(self, threads: int = 4, per_thread: int = 200) -> int:
        """Threads run queries while this thread keeps draining (query_stats) until they are done."""
        sa = self.sa
        stmt = sa.select(self.items.c.n).where(self.items.c.id == sa.bindparam("id"))

        def run() -> None:
            for i in range(per_thread):
                with self.engine.connect() as conn:
                    conn.execute(stmt, {"id": i % 100 + 1}).all()

        workers = [threading.Thread(target=run) for _ in range(threads)]
        for worker in workers:
            worker.start()
        drains = 0
        while any(worker.is_alive() for worker in workers):
            hook.query_stats(None)
            drains += 1
        for worker in workers:
            worker.join()
        return drains

    def fork_child(self, queries: int = 5) -> dict[str, Any]:
        """Fork (as a pre-forking server does): the child runs `queries` queries and sends back its own
        query_stats; the parent's numbers must not be in them."""
        sa = self.sa
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                os.close(read_fd)
                self.engine.dispose(close=False)  # the parent's pooled connections are not ours to use
                stmt = sa.select(self.items.c.name).where(self.items.c.id == sa.bindparam("id"))
                for i in range(queries):
                    with self.engine.connect() as conn:
                        conn.execute(stmt, {"id": i + 1}).all()
                with os.fdopen(write_fd, "w") as pipe:
                    pipe.write(json.dumps(hook.query_stats(None), default=str))
                code = 0
            finally:
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        result: dict[str, Any] = json.loads(data)
        return result

    def scalar(self, sql: str) -> Any:
        return self._scalar(self.sa.text(sql))

    def stats(self, window_s: float | None = None, now: float | None = None) -> dict[str, Any]:
        return hook.query_stats(window_s, now)

    def explain(self, params: dict[str, Any]) -> dict[str, Any]:
        return hook.explain(params)

    def teardown(self) -> None:
        self.release()
        self.meta.drop_all(self.engine)
        self.engine.dispose()

    def _scalar(self, stmt: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("suffix")
    parser.add_argument("--pool-size", type=int, default=5)
    parser.add_argument("--max-overflow", type=int, default=10)
    parser.add_argument("--slow-ms", type=float, default=20.0)
    parser.add_argument("--threshold", type=int, default=10)
    parser.add_argument(
        "--engine-first",
        action="store_true",
        help="instrument the engine, then every engine (default: reverse)",
    )
    args = parser.parse_args()
    app = App(args)
    commands: dict[str, Callable[..., Any]] = {
        name: getattr(app, name)
        for name in (
            "setup",
            "workload",
            "n_plus_one",
            "find_by_email",
            "exec",
            "fail",
            "hold",
            "release",
            "contend",
            "scalar",
            "fork_child",
            "concurrent",
            "stats",
            "explain",
            "teardown",
        )
    }
    serve(commands, dialect=app.dialect)


if __name__ == "__main__":
    main()
