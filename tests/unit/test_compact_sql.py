"""Short fingerprints for the queries list, on statements SQLAlchemy's ORM really generates (models with
ten and more columns, joins, subqueries), fingerprinted by perftop's own normalizer."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from perftop.agent.fingerprint import fingerprint
from perftop.render.sql import ELLIPSIS, compact_sql


class Base(DeclarativeBase):
    pass


followers = sa.Table(
    "followers",
    Base.metadata,
    sa.Column("follower_id", sa.ForeignKey("users.id")),
    sa.Column("followed_id", sa.ForeignKey("users.id")),
)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str]
    email: Mapped[str]
    password_hash: Mapped[str]
    about_me: Mapped[str]
    last_seen: Mapped[dt.datetime]
    created_at: Mapped[dt.datetime]
    locale: Mapped[str]
    timezone: Mapped[str]
    avatar_url: Mapped[str]
    is_admin: Mapped[bool]
    token: Mapped[str]
    posts: Mapped[list[Post]] = relationship(back_populates="author")


class Post(Base):
    __tablename__ = "post"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    timestamp: Mapped[dt.datetime]
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"))
    language: Mapped[str]
    author: Mapped[User] = relationship(back_populates="posts")


def sql(stmt: sa.Executable) -> str:
    return fingerprint(str(stmt.compile(dialect=postgresql.dialect())))


FOLLOWERS = sql(
    sa.select(User).join(followers, followers.c.followed_id == User.id).where(followers.c.follower_id == 1)
)
FOLLOWING = sql(
    sa.select(User).join(followers, followers.c.follower_id == User.id).where(followers.c.followed_id == 1)
)
FOLLOWERS_COUNT = sql(
    sa.select(sa.func.count()).select_from(
        sa.select(User).join(followers, followers.c.followed_id == User.id).subquery()
    )
)
TIMELINE = sql(
    sa.select(Post, User)
    .join(Post.author)
    .where(Post.user_id.in_([1, 2, 3]))
    .order_by(Post.timestamp.desc())
    .limit(10)
    .offset(20)
)
INSERT = sql(sa.insert(Post).values(body="x", timestamp=dt.datetime(2026, 1, 1), user_id=1, language="en"))
UPDATE = sql(sa.update(User).where(User.id == 3).values(last_seen=dt.datetime(2026, 1, 1), about_me="x"))


def test_select_lists_collapse_to_their_tables_and_the_rest_is_kept() -> None:
    assert compact_sql(FOLLOWERS).startswith("SELECT users.… (12 cols) FROM users JOIN followers ON ")
    assert compact_sql(FOLLOWERS).endswith("WHERE followers.follower_id = ?")
    assert compact_sql(TIMELINE).startswith("SELECT post.…, users.… (17 cols) FROM post JOIN users ON ")
    assert compact_sql(TIMELINE).endswith("ORDER BY post.timestamp DESC LIMIT ? OFFSET ?")
    assert "(SELECT …)" in compact_sql(FOLLOWERS_COUNT)
    assert compact_sql(INSERT) == "INSERT INTO post (4 cols) VALUES (…) RETURNING post.id"
    assert compact_sql(UPDATE).startswith("UPDATE users SET ")
    assert compact_sql("SELECT 1") == "SELECT 1"


@pytest.mark.parametrize("width", [30, 40, 44, 60, 80, 120])
def test_statements_that_differ_in_their_tail_look_different_at_every_width(width: int) -> None:
    assert FOLLOWERS != FOLLOWING and FOLLOWERS[:60] == FOLLOWING[:60]
    short = {fp: compact_sql(fp, width) for fp in (FOLLOWERS, FOLLOWING, TIMELINE, FOLLOWERS_COUNT, INSERT)}
    assert all(len(text) <= width for text in short.values()), short
    assert short[FOLLOWERS] != short[FOLLOWING]
    assert len(set(short.values())) == len(short)


def test_the_verb_and_first_table_stay_whenever_they_fit() -> None:
    for fp in (FOLLOWERS, FOLLOWING, TIMELINE):
        for width in (40, 60, 80):
            text = compact_sql(fp, width)
            assert text.startswith("SELECT "), text
            assert ELLIPSIS in text
