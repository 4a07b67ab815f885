"""The recording file: an SQLite database written and read through SQLAlchemy Core.

A `meta` table (format version, PID, start time, interval, host) and a `samples` table with one row per
interval: its time, the id of its group's keyframe (None for a keyframe) and its document as
`perftop.recording.codec` encodes it. A keyframe starts a group every KEYFRAME_EVERY rows, or sooner, so a
group never takes more than an eighth of the size cap.

Crash-safe: every interval is committed on its own in rollback-journal mode with synchronous=FULL, so a
recorder killed at any moment leaves a file readable up to its last committed interval (SQLite rolls a
half-written transaction back the next time the file is opened). Bounded: before a row would take the file
past `--max-mb`, the oldest groups are deleted and the freed pages returned to the filesystem (incremental
auto_vacuum), so the file stays under the cap while recording goes on.

SQLAlchemy is imported where it is used: registering `record` and `replay` on the CLI's parser costs the
other commands nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from perftop.recording.codec import (
    MAX_DOCUMENT_BYTES,
    MB,
    compress,
    decompress,
    delta_document,
    dictionary_of,
    parse_document,
    restore_document,
    to_json_bytes,
)
from perftop.recording.errors import MALFORMED, RecordingError, db_message
from perftop.recording.frames import agent_from_json, process_from_json, system_from_json

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

FORMAT_VERSION = 1
"""Bumped whenever a reader of the previous format could not read the new one."""
SQLITE_MAGIC = b"SQLite format 3\x00"
KEYFRAME_EVERY = 30
"""Rows per group: one keyframe compressed on its own, the others with it as preset dictionary."""
MAX_META_BYTES = 1 * MB
"""Largest value in the meta table a reader accepts."""
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.05, 3600.0
"""The intervals `perftop record --interval` accepts, and so the only ones a reader believes."""


def _tables() -> tuple[Any, Any, Any]:
    """(metadata, meta table, samples table); SQLAlchemy is imported only when recordings are used."""
    from sqlalchemy import Column, Float, Integer, LargeBinary, MetaData, String, Table, Text

    metadata = MetaData()
    meta = Table("meta", metadata, Column("key", String, primary_key=True), Column("value", Text))
    samples = Table(
        "samples",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("taken_at", Float, nullable=False),
        Column("key_id", Integer, nullable=True),
        Column("payload", LargeBinary, nullable=False),
    )
    return metadata, meta, samples


def _engine(path: str, writer: bool = False, read_only: bool = False, page_size: int = 4096) -> Engine:
    """An engine on the file; only the writer's sets the file's own settings (a reader changes nothing,
    even in a file that turns out not to be a recording)."""
    from urllib.parse import quote

    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import NullPool

    url = f"sqlite:///file:{quote(os.path.abspath(path))}?uri=true" + ("&mode=ro" if read_only else "")
    engine = create_engine(url, poolclass=NullPool, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout = 10000")
        if writer:
            # These two only take effect on a new, empty database: then the file can give pages back, and
            # rows of a few kB pack into pages without leaving most of each page empty.
            cursor.execute(f"PRAGMA page_size = {int(page_size)}")
            cursor.execute("PRAGMA auto_vacuum = INCREMENTAL")
            cursor.execute("PRAGMA journal_mode = DELETE")
            cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()

    return engine


class RecordingWriter:
    """Appends intervals to a recording file, one commit each, keeping the file under `max_bytes`."""

    def __init__(self, path: str, meta: dict[str, Any], max_bytes: int) -> None:
        """Create the recording at `path` (which must not exist yet) with this `meta`."""
        from sqlalchemy import insert
        from sqlalchemy.exc import SQLAlchemyError

        self.path = path
        self.max_bytes = max_bytes
        self.rows = 0
        self.dropped = 0
        self._key: tuple[int, dict[str, Any], bytes] | None = None
        """(row id, document, preset dictionary) of the current group's keyframe."""
        self._group_rows = 0
        self._group_bytes = 0
        if os.path.exists(path):
            raise RecordingError(f"{path} already exists")
        metadata, self._meta, self._samples = _tables()
        try:
            self._engine = _engine(path, writer=True, page_size=16384 if max_bytes >= 4 * MB else 4096)
            self._conn = self._engine.connect()
            metadata.create_all(self._conn)
            values = {"version": FORMAT_VERSION, **meta}
            self._conn.execute(
                insert(self._meta), [{"key": k, "value": json.dumps(v)} for k, v in values.items()]
            )
            self._conn.commit()
            self._page_size = int(self._conn.exec_driver_sql("PRAGMA page_size").scalar_one())
        except SQLAlchemyError as exc:
            raise RecordingError(f"cannot write {path}: {db_message(exc)}") from None

    def append(self, taken_at: float, doc: dict[str, Any]) -> None:
        """Add one interval (committed before returning), dropping the oldest ones first if needed."""
        from sqlalchemy import insert
        from sqlalchemy.exc import SQLAlchemyError

        if self._key is not None and (
            self._group_rows >= KEYFRAME_EVERY or self._group_bytes >= self.max_bytes / 8
        ):
            self._key = None
        if self._key is None:
            raw = to_json_bytes(doc)
            payload = compress(raw, None)
        else:
            _, key_doc, dictionary = self._key
            raw_delta = to_json_bytes(delta_document(doc, key_doc))
            payload = compress(raw_delta, dictionary)
        if len(raw if self._key is None else raw_delta) > MAX_DOCUMENT_BYTES:
            raise RecordingError(f"an interval of more than {MAX_DOCUMENT_BYTES // MB} MB cannot be recorded")
        try:
            self._make_room(len(payload))
            result = self._conn.execute(
                insert(self._samples),
                {
                    "taken_at": taken_at,
                    "key_id": None if self._key is None else self._key[0],
                    "payload": payload,
                },
            )
            self._conn.commit()
        except SQLAlchemyError as exc:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.rollback()
            raise RecordingError(f"cannot write {self.path}: {db_message(exc)}") from None
        if self._key is None:
            row_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
            if row_id is not None:
                key_doc = json.loads(raw)  # exactly what a reader will see
                self._key = (int(row_id), key_doc, dictionary_of(key_doc))
            self._group_rows = self._group_bytes = 0
        self._group_rows += 1
        self._group_bytes += len(payload)
        self.rows += 1

    def _pragma(self, name: str) -> int:
        """An integer PRAGMA of the file (page_count, freelist_count...)."""
        return int(self._conn.exec_driver_sql(f"PRAGMA {name}").scalar_one())

    def _make_room(self, incoming: int) -> None:
        """Delete the oldest groups of rows (and shrink the file) until `incoming` more bytes fit under
        the cap. Whole groups go, keyframe and all, so every row left can still be decoded."""
        from sqlalchemy import delete, func, select

        page = self._page_size
        live = (self._pragma("page_count") - self._pragma("freelist_count")) * page
        # A row costs its payload plus b-tree overhead; leave room for a page split or two.
        need = 2 * incoming + 4 * page
        if live + need <= self.max_bytes:
            return
        samples = self._samples
        count = self._conn.execute(select(func.count()).select_from(samples)).scalar_one()
        if count == 0:
            return
        per_row = max(1.0, live / count)
        drop = min(count, max(1, math.ceil((live + need - 0.85 * self.max_bytes) / per_row)))
        cut = self._conn.execute(
            select(samples.c.id).order_by(samples.c.id).offset(drop - 1).limit(1)
        ).scalar_one()
        # The first keyframe after the cut starts the first group that stays.
        keep_from = self._conn.execute(
            select(func.min(samples.c.id)).where(samples.c.key_id.is_(None), samples.c.id > cut)
        ).scalar_one_or_none()
        if keep_from is None:
            self._conn.execute(delete(samples))
            self._key = None  # the group under way is gone: the next row starts a new one
        else:
            self._conn.execute(delete(samples).where(samples.c.id < keep_from))
        self._conn.commit()
        # Each step of this pragma frees one page, and the driver's execute() takes one step: run it as a
        # script, which steps it to the end (the transaction was committed just above).
        raw: Any = self._conn.connection.driver_connection
        raw.executescript("PRAGMA incremental_vacuum;")
        self.dropped += count - self._conn.execute(select(func.count()).select_from(samples)).scalar_one()

    def close(self) -> None:
        """Close the connection; never raises (it runs as the recorder ends, whatever ended it)."""
        with contextlib.suppress(Exception):
            self._conn.close()
        with contextlib.suppress(Exception):
            self._engine.dispose()


class RecordingReader:
    """A recording opened for replay: its meta, the time of every interval, and each interval's data.

    Opening checks everything that can be checked cheaply (SQLite header, our tables, format version,
    SQLite's quick_check, the first and last intervals), so a truncated or foreign file is one
    RecordingError with a one-line message rather than a failure half-way through a replay.
    """

    CACHE = 64

    def __init__(self, path: str) -> None:
        from sqlalchemy import select
        from sqlalchemy.exc import SQLAlchemyError

        self.path = path
        try:
            # O_NONBLOCK: a FIFO or a device must be refused, not waited on.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise RecordingError(f"cannot open {path}: {exc.strerror or exc}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RecordingError(f"{path} is not a perftop recording (not a regular file)")
            header = os.read(fd, len(SQLITE_MAGIC))
        except OSError as exc:
            raise RecordingError(f"cannot read {path}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        if header != SQLITE_MAGIC:
            what = "an empty file" if not header else "not an SQLite database"
            raise RecordingError(f"{path} is not a perftop recording ({what})")
        _, self._meta_table, self._samples = _tables()
        # Read-write if we may, so that SQLite can roll back what a killed recorder left half-written.
        self._engine = _engine(path, read_only=not os.access(path, os.W_OK))
        self._lock = threading.Lock()
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._keys: OrderedDict[int, tuple[dict[str, Any], bytes]] = OrderedDict()
        try:
            with self._engine.connect() as conn:
                tables = {
                    row[0]
                    for row in conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")
                }
                if not {"meta", "samples"} <= tables:
                    raise RecordingError(f"{path} is an SQLite database but not a perftop recording")
                self.meta = self._read_meta(conn)
                check = conn.exec_driver_sql("PRAGMA quick_check").scalar()
                if check != "ok":
                    lines = [ln for ln in str(check).splitlines() if ln and not ln.startswith("***")]
                    raise RecordingError(f"{path} is damaged (truncated?): {(lines or ['?'])[0]}")
                samples = self._samples
                index = conn.execute(
                    select(samples.c.id, samples.c.taken_at, samples.c.key_id).order_by(samples.c.id)
                ).all()
        except (SQLAlchemyError, UnicodeDecodeError) as exc:
            raise RecordingError(f"{path} is not a readable perftop recording: {db_message(exc)}") from None
        if not index:
            raise RecordingError(f"{path} holds no recorded interval yet")
        self.ids: list[int] = [row[0] for row in index]
        try:
            self.times: list[float] = [float(row[1]) for row in index]
        except (TypeError, ValueError):
            raise RecordingError(f"{path}: an interval's time is not a number") from None
        for end in (0, len(self.ids) - 1):
            doc = self.frame(end)
            try:
                system_from_json(doc)
                process_from_json(doc)
                agent_from_json(doc)
            except MALFORMED as exc:
                raise RecordingError(f"{path}: interval {end} is malformed ({exc!r})") from None

    def _read_meta(self, conn: Any) -> dict[str, Any]:
        """The meta table, checked: our format version, and a plausible PID, interval and start time."""
        from sqlalchemy import select

        meta: dict[str, Any] = {}
        for key, value in conn.execute(select(self._meta_table.c.key, self._meta_table.c.value)):
            try:
                if len(value) > MAX_META_BYTES:
                    raise ValueError("too large")
                meta[key] = json.loads(value)
            except (TypeError, ValueError, RecursionError):
                raise RecordingError(f"{self.path}: the recording's meta table is damaged") from None
        version = meta.get("version")
        if version != FORMAT_VERSION:
            raise RecordingError(
                f"{self.path} is a recording in format {version!r};"
                f" this perftop reads format {FORMAT_VERSION}"
            )
        for key, kind, low, high in (
            ("pid", int, 1, 2**32),
            ("interval", (int, float), MIN_INTERVAL_S, MAX_INTERVAL_S),
            ("started_at", (int, float), 0, 2**40),
        ):
            value = meta.get(key)
            if not isinstance(value, kind) or isinstance(value, bool) or not low <= value <= high:
                raise RecordingError(f"{self.path}: the recording's meta table lacks a valid {key!r}")
        return meta

    @property
    def pid(self) -> int:
        """The recorded process's PID."""
        return int(self.meta["pid"])

    @property
    def interval(self) -> float:
        """Seconds between recorded intervals, as asked for (`perftop record --interval`)."""
        return float(self.meta["interval"])

    def __len__(self) -> int:
        """Intervals in the recording (those the size cap has not dropped)."""
        return len(self.ids)

    def frame(self, index: int) -> dict[str, Any]:
        """The document recorded at interval `index` (0 = oldest kept); RecordingError if unreadable."""
        row_id = self.ids[index]
        with self._lock:
            doc = self._cache.get(row_id)
            if doc is not None:
                self._cache.move_to_end(row_id)
                return doc
            key_id, blob = self._row(row_id)
            try:
                if key_id is None:
                    doc = parse_document(decompress(blob, None))
                else:
                    key_doc, dictionary = self._keyframe(key_id)
                    doc = restore_document(parse_document(decompress(blob, dictionary)), key_doc)
            except MALFORMED as exc:
                raise RecordingError(f"{self.path}: interval {index} is malformed ({exc!r})") from None
            for part in ("system", "process", "recording"):
                if not isinstance(doc.get(part), dict):
                    raise RecordingError(f"{self.path}: interval {index} lacks its {part!r} data")
            self._cache[row_id] = doc
            while len(self._cache) > self.CACHE:
                self._cache.popitem(last=False)
            return doc

    def _row(self, row_id: int) -> tuple[int | None, bytes]:
        from sqlalchemy import case, func, select
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self._engine.connect() as conn:
                samples = self._samples
                size = func.length(samples.c.payload)
                # The payload only if its size is plausible: a crafted row cannot make us load a GB.
                row = conn.execute(
                    select(
                        samples.c.key_id,
                        case((size <= MAX_DOCUMENT_BYTES, samples.c.payload), else_=None),
                        size,
                    ).where(samples.c.id == row_id)
                ).one_or_none()
        except (SQLAlchemyError, UnicodeDecodeError) as exc:
            raise RecordingError(f"{self.path}: cannot read interval {row_id}: {db_message(exc)}") from None
        if row is None:
            raise RecordingError(f"{self.path}: interval {row_id} is gone (dropped by the size cap?)")
        key_id, payload = row[0], row[1]
        if not isinstance(payload, bytes) or not (key_id is None or isinstance(key_id, int)):
            raise RecordingError(f"{self.path}: interval {row_id} is malformed (size {row[2]})")
        return key_id, payload

    def _keyframe(self, key_id: int) -> tuple[dict[str, Any], bytes]:
        """A keyframe's document and its group's preset dictionary, cached."""
        key = self._keys.get(key_id)
        if key is None:
            own_key, blob = self._row(key_id)
            if own_key is not None:
                raise RecordingError(f"{self.path}: interval {key_id} is not a keyframe")
            doc = parse_document(decompress(blob, None))
            key = (doc, dictionary_of(doc))
            self._keys[key_id] = key
            while len(self._keys) > 4:
                self._keys.popitem(last=False)
        return key

    def index_at(self, taken_at: float) -> int:
        """The last interval recorded at or before `taken_at` (0 if none)."""
        from bisect import bisect_right

        return max(0, bisect_right(self.times, taken_at) - 1)

    def close(self) -> None:
        """Release the file."""
        self._engine.dispose()
