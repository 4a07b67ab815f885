"""A plain SQLAlchemy program for `perftop run` tests: it imports nothing from perftop.

Usage: python run_sqla.py EXIT_CODE
Runs a few queries against an in-memory SQLite database, prints `ready`, then echoes each stdin line
as `echo: LINE` until stdin closes, and exits with EXIT_CODE.
"""

import sys

from sqlalchemy import create_engine, text


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE run_items (id INTEGER PRIMARY KEY, name TEXT)"))
        for i in range(20):
            conn.execute(
                text("INSERT INTO run_items (id, name) VALUES (:id, :name)"), {"id": i, "name": f"n{i}"}
            )
        conn.execute(text("SELECT count(*) FROM run_items WHERE name LIKE 'n1%'")).scalar()
    say("ready")
    for line in sys.stdin:
        say(f"echo: {line.rstrip()}")
    sys.exit(int(sys.argv[1]))


if __name__ == "__main__":
    main()
