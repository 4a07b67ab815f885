"""The built-in demo service: a small instrumented "shop" that gives every perftop pane real work.

It runs worker threads that call its endpoints in a loop, against a SQLite database it creates:
endpoints with different latency distributions and error rates (`time_it`), an unindexed slow query, an N+1
loop, a connection pool, a slow memory leak, reference cycles for the GC, a CPU-hot function, and an
asyncio part. `perftop demo` starts it and attaches; `perftop demo --no-tui` runs only the service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import perftop

log = logging.getLogger("perftop.launch.demo_service")

COUNTRIES = ("FR", "DE", "US", "JP", "BR", "IN", "NG", "SE")
STATUSES = ("new", "paid", "shipped", "cancelled", "refunded")


class PaymentDeclined(Exception):
    """The demo's checkout fails now and then, like a real payment provider."""


class Shop:
    """The demo's endpoints, each timed with perftop."""

    def __init__(self, url: str, leak_per_call: int = 50) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.pool import QueuePool

        sqlite = url.startswith("sqlite")
        self.engine = create_engine(
            url,
            poolclass=QueuePool,
            pool_size=4,
            max_overflow=2,
            connect_args={"check_same_thread": False, "timeout": 30} if sqlite else {},
        )
        self._id = "INTEGER PRIMARY KEY" if sqlite else "SERIAL PRIMARY KEY"
        perftop.instrument_sqlalchemy(self.engine, slow_ms=25)
        self.rng = random.Random(42)
        self._leak: list[bytes] = []
        self._leak_per_call = leak_per_call
        self._lock = threading.Lock()

    def setup(self, customers: int = 2000, orders: int = 150_000) -> None:
        """Create and fill the schema; `orders.status` and `customers.email` are left unindexed."""
        from sqlalchemy import text

        rng = random.Random(7)
        with self.engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS orders"))
            conn.execute(text("DROP TABLE IF EXISTS customers"))
            conn.execute(text(f"CREATE TABLE customers (id {self._id}, name TEXT, email TEXT, country TEXT)"))
            conn.execute(
                text(
                    f"CREATE TABLE orders (id {self._id}, customer_id INTEGER, total REAL,"
                    " status TEXT, created_at REAL)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO customers (id, name, email, country) VALUES (:id, :name, :email, :country)"
                ),
                [
                    {
                        "id": i,
                        "name": f"customer {i}",
                        "email": f"c{i}@example.com",
                        "country": rng.choice(COUNTRIES),
                    }
                    for i in range(1, customers + 1)
                ],
            )
            conn.execute(
                text(
                    "INSERT INTO orders (customer_id, total, status, created_at)"
                    " VALUES (:customer_id, :total, :status, :created_at)"
                ),
                [
                    {
                        "customer_id": rng.randint(1, customers),
                        "total": round(rng.lognormvariate(3, 1), 2),
                        "status": rng.choice(STATUSES),
                        "created_at": time.time() - rng.random() * 86400 * 30,
                    }
                    for _ in range(orders)
                ],
            )

    @perftop.time_it("api.products")
    def products(self) -> int:
        """Fast and steady: a primary-key lookup and a little work."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            row = conn.execute(
                text("SELECT id, name FROM customers WHERE id = :id"), {"id": self.rng.randint(1, 2000)}
            ).first()
        time.sleep(self.rng.lognormvariate(math.log(0.002), 0.4))
        return 0 if row is None else int(row[0])

    @perftop.time_it("api.checkout")
    def checkout(self) -> float:
        """Medium latency with a heavy tail, and about 4% declined payments (errors)."""
        from sqlalchemy import text

        with self.engine.begin() as conn:
            total = conn.execute(
                text("SELECT SUM(total) FROM orders WHERE customer_id = :c"), {"c": self.rng.randint(1, 2000)}
            ).scalar()
        delay = self.rng.lognormvariate(math.log(0.015), 0.6)
        if self.rng.random() < 0.02:
            delay += 0.25  # the occasional slow payment provider
        time.sleep(delay)
        if self.rng.random() < 0.04:
            raise PaymentDeclined("card declined")
        return float(total or 0.0)

    @perftop.time_it("api.search")
    def search(self) -> int:
        """The slow query: a filter on an unindexed column, sorted, scanning the whole table."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, total FROM orders WHERE status = :status AND total > :min"
                    " ORDER BY created_at DESC LIMIT 50"
                ),
                {"status": self.rng.choice(STATUSES), "min": self.rng.randint(5, 50)},
            ).all()
        return len(rows)

    @perftop.time_it("api.customer_orders")
    def customer_orders(self) -> int:
        """The N+1: one query for the customers, then one per customer for their orders."""
        from sqlalchemy import text

        found = 0
        with self.engine.connect() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    text("SELECT id FROM customers WHERE country = :country LIMIT 15"),
                    {"country": self.rng.choice(COUNTRIES)},
                )
            ]
            for cid in ids:
                found += len(
                    conn.execute(
                        text("SELECT id, total FROM orders WHERE customer_id = :c"), {"c": cid}
                    ).all()
                )
        return found

    @perftop.time_it("api.top_customers")
    def top_customers(self) -> int:
        """A join: each country's biggest orders with their customer (orders has no index on customer_id,
        so the join reads it whole: EXPLAIN's tree and advice show it)."""
        from sqlalchemy import text

        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT customers.name, orders.total FROM orders JOIN customers"
                    " ON customers.id = orders.customer_id WHERE customers.country = :country"
                    " ORDER BY orders.total DESC LIMIT 10"
                ),
                {"country": self.rng.choice(COUNTRIES)},
            ).all()
        return len(rows)

    @perftop.time_it("api.report")
    def report(self) -> int:
        """CPU-hot pure Python: shows up at the top of a CPU profile."""
        return hot_primes(12000 + self.rng.randint(0, 3000))

    @perftop.time_it("api.session")
    def session(self) -> int:
        """Leaks a little memory on every call (a cache that is never evicted) and makes GC cycles."""
        with self._lock:
            self._leak.extend(os.urandom(64) for _ in range(self._leak_per_call))
        make_cycles(200)
        perftop.gauge("sessions.cached", len(self._leak))
        hit = self.rng.random() < 0.8
        perftop.count("cache.hit" if hit else "cache.miss")
        return len(self._leak)


def hot_primes(limit: int) -> int:
    """Count primes below `limit` by trial division: deliberately slow."""
    count = 0
    for n in range(2, limit):
        is_prime = True
        d = 2
        while d * d <= n:
            if n % d == 0:
                is_prime = False
                break
            d += 1
        if is_prime:
            count += 1
    return count


class _Node:
    def __init__(self) -> None:
        self.other: Any = None
        self.payload = list(range(8))


def make_cycles(n: int) -> None:
    """Create `n` reference cycles that only the cyclic GC can free."""
    for _ in range(n):
        a, b = _Node(), _Node()
        a.other, b.other = b, a


ENDPOINTS = (
    ("products", 40),
    ("checkout", 20),
    ("search", 6),
    ("customer_orders", 6),
    ("report", 3),
    ("top_customers", 3),
    ("session", 25),
)


def worker(shop: Shop, stop: threading.Event, seed: int, pace: float) -> None:
    """Call endpoints in a weighted random mix until `stop` is set."""
    rng = random.Random(seed)
    names = [n for n, _ in ENDPOINTS]
    weights = [w for _, w in ENDPOINTS]
    while not stop.is_set():
        name = rng.choices(names, weights)[0]
        try:
            getattr(shop, name)()
        except PaymentDeclined:
            pass
        except Exception:
            log.exception("demo endpoint %s failed", name)
        stop.wait(rng.expovariate(1 / pace))


async def _async_part(stop: threading.Event) -> None:
    """An asyncio side: concurrent fetches timed with the context manager."""

    async def fetch(i: int) -> None:
        with perftop.timer("async.fetch"):
            await asyncio.sleep(random.lognormvariate(math.log(0.03), 0.5))

    perftop.watch_loop()  # the loop's lag, as the timing asyncio.loop_lag
    while not stop.is_set():
        await asyncio.gather(*(fetch(i) for i in range(5)))
        perftop.gauge("async.tasks", len(asyncio.all_tasks()))
        await asyncio.sleep(0.2)


def watch_parent(parent: int, stop: threading.Event, every_s: float = 0.5) -> None:
    """Set `stop` once `parent` is no longer our parent (it exited, and we were reparented)."""
    while os.getppid() == parent:
        if stop.wait(every_s):
            return
    log.warning("perftop demo: parent %d is gone, stopping", parent)
    stop.set()


def run(
    url: str | None, threads: int, pace: float, duration: float | None, parent: int | None = None
) -> None:
    """Run the demo until SIGTERM/SIGINT, `duration` seconds, or the end of the `parent` process."""
    perftop.start(name="perftop-demo")
    tmp = None
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="perftop-demo-")
        url = f"sqlite:///{Path(tmp.name) / 'shop.db'}"
    shop = Shop(url)
    shop.setup()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if parent is not None:
        watch = threading.Thread(target=watch_parent, args=(parent, stop), name="demo-watch", daemon=True)
        watch.start()
    pool = [
        threading.Thread(target=worker, args=(shop, stop, i, pace), name=f"demo-worker-{i}", daemon=True)
        for i in range(threads)
    ]
    loop_thread = threading.Thread(
        target=lambda: asyncio.run(_async_part(stop)), name="demo-asyncio", daemon=True
    )
    for t in [*pool, loop_thread]:
        t.start()
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait(duration)
    stop.set()
    for t in [*pool, loop_thread]:
        t.join(timeout=5)
    shop.engine.dispose()
    if tmp is not None:
        tmp.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perftop.launch.demo_service", description=__doc__)
    parser.add_argument(
        "--url",
        help="SQLAlchemy URL of the database to use, e.g. postgresql+psycopg://postgres@127.0.0.1/test "
        "(default: a temporary SQLite file); the demo drops and recreates its tables customers and orders",
    )
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--pace", type=float, default=0.05, help="mean pause between calls per thread, s")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--parent", type=int, default=None, help="stop when the process PARENT is gone")
    args = parser.parse_args(argv)
    run(args.url, args.threads, args.pace, args.duration, args.parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
