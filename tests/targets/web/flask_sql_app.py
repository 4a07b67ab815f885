"""A Flask + SQLAlchemy app that knows nothing of perftop, with an N+1 route; it measures its own SQL time
per request (execute and fetch of every statement) and returns it, as the oracle of perftop's breakdown.

PERFTOP_TEST_DB: the SQLite file to use (created with 5 posts per user on first use).
"""

import os
import time

import sqlalchemy as sa
from flask import Flask, jsonify, render_template
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

app = Flask(__name__)
engine = sa.create_engine(f"sqlite:///{os.environ['PERFTOP_TEST_DB']}")
with engine.begin() as setup:
    setup.exec_driver_sql("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT)")
    setup.exec_driver_sql("CREATE TABLE IF NOT EXISTS posts (id INTEGER PRIMARY KEY, user_id INT, body TEXT)")
    if not setup.exec_driver_sql("SELECT count(*) FROM users").scalar():
        for uid in range(1, 21):
            setup.exec_driver_sql(f"INSERT INTO users VALUES ({uid}, 'user{uid}')")
            for n in range(5):
                setup.exec_driver_sql(f"INSERT INTO posts (user_id, body) VALUES ({uid}, 'post {n}')")


def timed(conn: sa.Connection, sql: str, **params: object) -> tuple[list[sa.Row[object]], float]:
    t0 = time.perf_counter()
    rows = list(conn.execute(sa.text(sql), params))
    return rows, (time.perf_counter() - t0) * 1000


@app.get("/users/<int:uid>/posts")
def posts(uid: int) -> object:
    """One query for the user's posts, then one per post for its author: six queries (an N+1)."""
    spent = 0.0
    with engine.connect() as conn:
        found, ms = timed(conn, "SELECT id, user_id FROM posts WHERE user_id = :uid", uid=uid)
        spent += ms
        for post in found:
            _, ms = timed(conn, "SELECT name FROM users WHERE id = :id", id=post.user_id)
            spent += ms
    return jsonify(sql_ms=spent, queries=1 + len(found))


@app.get("/fast")
def fast() -> object:
    return jsonify(sql_ms=0.0, queries=0)


@app.get("/slow/<int:ms>")
def slow(ms: int) -> object:
    with engine.connect() as conn:
        _, spent = timed(conn, "SELECT count(*) FROM posts")
    time.sleep(ms / 1000)
    return jsonify(sql_ms=spent, queries=1)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Post(Base):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    body: Mapped[str]
    author: Mapped[User] = relationship(lazy="select")


@app.get("/page")
def page() -> str:
    """The N+1 of a template: each post's author is lazy-loaded by the ORM from inside the template's loop."""
    with Session(engine) as session:
        posts = session.scalars(sa.select(Post).where(Post.id % 5 == 0)).all()
        return render_template("posts.html", posts=posts)
