"""Runs 200 primary-key lookups on PostgreSQL through SQLAlchemy with perftop's hook, then idles.

Usage: pg_server_time.py URL TABLE  (prints `done` once the lookups have run)."""

import sys
import time

import sqlalchemy as sa

import perftop

url, table = sys.argv[1], sys.argv[2]
perftop.start()
engine = sa.create_engine(url)
perftop.instrument_sqlalchemy(engine)
with engine.begin() as conn:
    conn.exec_driver_sql(f"CREATE TABLE {table} (id int primary key, name text)")
    conn.exec_driver_sql(f"INSERT INTO {table} SELECT i, 'n' || i FROM generate_series(1, 100) i")
with engine.connect() as conn:
    for i in range(200):
        conn.execute(sa.text(f"SELECT name FROM {table} WHERE id = :id"), {"id": i % 100 + 1}).all()
sys.stdout.write("done\n")
sys.stdout.flush()
time.sleep(600)
