"""A recording file of one process (written by `perftop record`), and the reader `perftop replay` uses.

The commands themselves are in `perftop.commands.record` and `perftop.commands.replay`.

A recording is an SQLite database written through SQLAlchemy Core: a `meta` table (format version, PID,
start time, interval, host) and a `samples` table with one row per interval: the timestamp and the
document `perftop snapshot --json` prints (system, process, agent) as zlib-compressed JSON, plus what the
TUI needs that the document leaves out (each timing's merged sketch, for histograms and windows).

Consecutive intervals differ little, so rows come in groups: a keyframe, compressed on its own, every
KEYFRAME_EVERY rows (or sooner, so a group never takes more than an eighth of the size cap), and rows that
store only what changed since their keyframe where that is cheap to express (slow queries newer than the
keyframe's; sketch bin counts minus the keyframe's), compressed with the keyframe's JSON as preset
dictionary. A row is decoded from itself and its keyframe only; the size cap deletes whole groups.

Crash-safe: every interval is committed on its own in rollback-journal mode with synchronous=FULL, so a
recorder killed at any moment leaves a file readable up to its last committed interval (SQLite rolls a
half-written transaction back the next time the file is opened). Bounded: before a row would take the file
past `--max-mb`, the oldest rows are deleted and the freed pages returned to the filesystem (incremental
auto_vacuum), so the file stays under the cap while recording goes on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import socket
import stat
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from perftop._version import __version__
from perftop.collectors.errors import CollectorError
from perftop.collectors.model import (
    CgroupInfo,
    DiskIO,
    Limit,
    MemoryInfo,
    NetIO,
    Pressure,
    ProcessRow,
    ProcessSample,
    ProcessTree,
    SwapInfo,
    SystemSample,
    WorkerRow,
)
from perftop.wire.sketch import Sketch, SketchError, bucket_value

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from perftop.collectors.agent_view import AgentView
    from perftop.collectors.process import ProcessCollector
    from perftop.collectors.workers import TreeCollector

# SQLAlchemy, psutil, the collectors and the TUI are imported where they are used: registering `record`
# and `replay` on the CLI's parser costs the other commands nothing.

log = logging.getLogger("perftop")

FORMAT_VERSION = 1
"""Bumped whenever a reader of the previous format could not read the new one."""
SQLITE_MAGIC = b"SQLite format 3\x00"
MB = 1_000_000
DEFAULT_MAX_MB = 100.0
MIN_MAX_MB = 0.1
"""Below this the schema and one interval may not fit."""
KEYFRAME_EVERY = 30
"""Rows per group: one keyframe compressed on its own, the others with it as preset dictionary."""
MAX_DOCUMENT_BYTES = 32 * MB
"""Largest interval document written or read (an agent's stats frame is at most 16 MiB)."""
MAX_META_BYTES = 1 * MB
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.05, 3600.0
"""The intervals `perftop record --interval` accepts, and so the only ones a reader believes."""
"""Largest value in the meta table a reader accepts."""


@functools.cache
def _limit_units() -> dict[str, str]:
    from perftop.collectors.process import LIMIT_SPECS

    return {spec.name: spec.unit for spec in LIMIT_SPECS}


class RecordingError(Exception):
    """A recording cannot be written or read; the message is one line fit for `perftop: ...`."""


MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError, RecursionError)
"""What reading a recorded document of the wrong shape raises (a field of the wrong type, missing...)."""


# -- the tables ------------------------------------------------------------------------------------------


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


def to_json_bytes(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def compress(raw: bytes, key: bytes | None) -> bytes:
    """zlib, with the keyframe's JSON as preset dictionary when there is one."""
    if key is None:
        return zlib.compress(raw, 9)
    co = zlib.compressobj(9, zdict=key)
    return co.compress(raw) + co.flush()


def decompress(blob: bytes, key: bytes | None) -> bytes:
    """The bytes `compress` made; RecordingError if they are damaged or would inflate past
    MAX_DOCUMENT_BYTES (a zlib bomb in a crafted file must not take the reader's memory)."""
    try:
        do = zlib.decompressobj() if key is None else zlib.decompressobj(zdict=key)
        raw = do.decompress(blob, MAX_DOCUMENT_BYTES + 1)
        if len(raw) <= MAX_DOCUMENT_BYTES and not do.unconsumed_tail:
            raw += do.flush()
    except zlib.error as exc:
        raise RecordingError(f"a recorded interval is damaged: {exc}") from None
    if len(raw) > MAX_DOCUMENT_BYTES or do.unconsumed_tail:
        raise RecordingError(
            f"a recorded interval inflates past {MAX_DOCUMENT_BYTES // MB} MB (not one perftop wrote)"
        )
    if not do.eof:
        raise RecordingError("a recorded interval is damaged: it is truncated")
    return raw


def parse_document(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RecordingError(f"a recorded interval is damaged: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise RecordingError("a recorded interval is damaged: not a JSON object")
    return doc


def pack_sketch(sketch: Sketch) -> dict[str, Any]:
    """`Sketch.to_dict`, with the bins as a dense run of counts from the lowest index where that is
    smaller (latency bins are contiguous): about half the size once compressed."""
    data = sketch.to_dict()
    bins = data["bins"]
    if bins and bins[-1][0] - bins[0][0] < 4 * len(bins):
        low = bins[0][0]
        counts = [0] * (bins[-1][0] - low + 1)
        for i, n in bins:
            counts[i - low] = n
        del data["bins"]
        data["low"] = low
        data["counts"] = counts
    return data


def unpack_sketch(data: Any) -> Sketch:
    """The Sketch `pack_sketch` packed; SketchError if malformed."""
    if isinstance(data, dict) and "counts" in data:
        low, counts = data.get("low"), data.get("counts")
        if not isinstance(low, int) or not isinstance(counts, list):
            raise SketchError("packed sketch without a valid low index and counts")
        rest = {k: v for k, v in data.items() if k not in ("low", "counts")}
        rest["bins"] = [[low + k, n] for k, n in enumerate(counts) if n]
        data = rest
    return Sketch.from_dict(data)


def dictionary_of(key: dict[str, Any]) -> bytes:
    """The preset dictionary of a keyframe's group: its JSON without the slow queries (which the other
    rows do not repeat), so that it fits zlib's 32 kB window. Computed from the keyframe as parsed back
    from its JSON, identically by the writer and the reader."""
    return to_json_bytes({**key, "slow_queries": []})


def _key_counts(packed: Any) -> dict[int, int] | None:
    if (
        isinstance(packed, dict)
        and isinstance(packed.get("low"), int)
        and isinstance(packed.get("counts"), list)
    ):
        low = packed["low"]
        return {low + k: n for k, n in enumerate(packed["counts"]) if n}
    return None


def delta_document(doc: dict[str, Any], key: dict[str, Any]) -> dict[str, Any]:
    """`doc` as stored in a keyframe's group: slow queries newer than the keyframe's only, and packed
    sketch counts minus the keyframe's where its bins lie within theirs. `restore_document` reverses it."""
    out = dict(doc)
    extra = dict(doc["recording"])
    out["recording"] = extra
    slow = doc.get("slow_queries") or []
    key_slow = key.get("slow_queries") or []
    if slow and key_slow:
        newest = max(float(q.get("at") or 0.0) for q in key_slow)
        out["slow_queries"] = [q for q in slow if float(q.get("at") or 0.0) > newest]
        extra["slow_total"] = len(slow)
    agent, key_agent = extra.get("agent"), (key.get("recording") or {}).get("agent")
    if isinstance(agent, dict) and isinstance(key_agent, dict):
        key_sketches = key_agent.get("sketches") or {}
        sketches = {}
        for name, packed in (agent.get("sketches") or {}).items():
            base = _key_counts(key_sketches.get(name))
            mine = _key_counts(packed)
            low = packed.get("low") if isinstance(packed, dict) else None
            if base and mine is not None and isinstance(low, int) and min(base) >= low:
                high = low + len(packed["counts"])
                if max(base) < high:
                    packed = {
                        **packed,
                        "counts": [n - base.get(low + k, 0) for k, n in enumerate(packed["counts"])],
                    }
                    packed["delta"] = True
            sketches[name] = packed
        extra["agent"] = {**agent, "sketches": sketches}
    return out


def restore_document(doc: dict[str, Any], key: dict[str, Any]) -> dict[str, Any]:
    """The document `delta_document` reduced, rebuilt from what it kept and its keyframe."""
    extra = doc.get("recording")
    if not isinstance(extra, dict):
        return doc
    total = extra.pop("slow_total", None)
    if isinstance(total, int):
        merged = list(doc.get("slow_queries") or []) + list(key.get("slow_queries") or [])
        merged.sort(key=lambda q: float(q.get("at") or 0.0), reverse=True)
        doc["slow_queries"] = merged[:total]
    agent, key_agent = extra.get("agent"), (key.get("recording") or {}).get("agent")
    if isinstance(agent, dict):
        key_sketches = (key_agent if isinstance(key_agent, dict) else {}).get("sketches") or {}
        for name, packed in (agent.get("sketches") or {}).items():
            if isinstance(packed, dict) and packed.pop("delta", False):
                base = _key_counts(key_sketches.get(name))
                low = packed.get("low")
                if base is None or not isinstance(low, int):
                    raise RecordingError(f"a recorded interval is damaged: no keyframe counts for {name!r}")
                packed["counts"] = [n + base.get(low + k, 0) for k, n in enumerate(packed["counts"])]
    return doc


# -- writing ---------------------------------------------------------------------------------------------


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
            raise RecordingError(f"cannot write {path}: {_db_message(exc)}") from None

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
            raise RecordingError(f"cannot write {self.path}: {_db_message(exc)}") from None
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
        with contextlib.suppress(Exception):
            self._conn.close()
        with contextlib.suppress(Exception):
            self._engine.dispose()


def interval_document(
    system: SystemSample, process: ProcessSample, agent: AgentView | None, taken_at: float
) -> dict[str, Any]:
    """What one row of a recording holds: the snapshot document, and under `recording` the rest the
    replay needs to rebuild the TUI's data (sketches, per-worker rows, raw GC and SQL figures...)."""
    from perftop.export.snapshot import Snapshot, snapshot_json

    doc = snapshot_json(Snapshot(taken_at, system, process, agent))
    extra: dict[str, Any] = {
        "system_taken_at": system.taken_at,
        "interval_s": system.interval_s,
        "process_taken_at": process.taken_at,
        "connections_sampled_at": process.connections_sampled_at,
        "agent": None,
    }
    if agent is not None:
        queries = agent.queries
        extra["agent"] = {
            "info": agent.info,
            "window_s": agent.window_s,
            "taken_at": agent.taken_at,
            "sketches": {name: pack_sketch(sk) for name, sk in agent.sketches.items()},
            "per_pid": {str(pid): rows for pid, rows in agent.per_pid.items()},
            "errors_by_type": agent.errors_by_type,
            "overflow": agent.overflow,
            "gc": agent.gc,
            "queries": None
            if queries is None
            else {"overflow": queries.get("overflow", {}), "slow_ms": queries.get("slow_ms")},
        }
    doc["recording"] = extra
    return doc


class Recorder:
    """Records `pid` every `interval` seconds into a new file at `path`, in a thread of its own.

    `start()` creates the file and checks the process at once (RecordingError says why it cannot);
    `stop()` ends the recording and waits for the thread. It also ends by itself after `duration`
    seconds, or when the process exits (`ended` then says so). `on_finish(recorder)` is called from the
    recording thread when it ends, whatever the reason.
    """

    def __init__(
        self,
        pid: int,
        path: str,
        interval: float = 1.0,
        socket_dir: str | None = None,
        duration: float | None = None,
        max_mb: float = DEFAULT_MAX_MB,
        on_finish: Callable[[Recorder], None] | None = None,
    ) -> None:
        self.pid = pid
        self.path = path
        self.interval = interval
        self.socket_dir = socket_dir
        self.duration = duration
        self.max_mb = max_mb
        self.on_finish = on_finish
        self.error: str | None = None
        """Why the recording failed, if it did."""
        self.ended: str | None = None
        """Why the recording ended by itself (process exited, duration reached), if it did."""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer: RecordingWriter | None = None
        self._process: ProcessCollector | None = None
        self._tree: TreeCollector | None = None

    @property
    def intervals(self) -> int:
        """Intervals written so far."""
        return 0 if self._writer is None else self._writer.rows

    @property
    def dropped(self) -> int:
        """Oldest intervals deleted to keep the file under the cap."""
        return 0 if self._writer is None else self._writer.dropped

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Recorder:
        if self.max_mb < MIN_MAX_MB:
            raise RecordingError(f"--max-mb must be at least {MIN_MAX_MB}")
        from perftop.collectors.process import ProcessCollector
        from perftop.collectors.workers import TreeCollector

        try:
            self._process = ProcessCollector(self.pid)
            self._tree = TreeCollector(self.pid)  # the workers' CPU baseline, from now
            first = self._process.sample()
        except CollectorError as exc:
            raise RecordingError(str(exc)) from None
        meta = {
            "pid": self.pid,
            "started_at": time.time(),
            "interval": self.interval,
            "hostname": socket.gethostname(),
            "perftop_version": __version__,
            "name": first.name,
            "cmdline": list(first.cmdline),
            "max_mb": self.max_mb,
        }
        self._writer = RecordingWriter(self.path, meta, int(self.max_mb * MB))
        self._thread = threading.Thread(target=self._run, name="perftop-recorder", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """End the recording (the interval under way is finished first) and wait for the thread."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the recording to end by itself; True if it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def _run(self) -> None:
        from perftop.collectors.agent_client import AgentError
        from perftop.collectors.agent_view import AgentWatcher
        from perftop.collectors.system import SystemCollector

        assert self._writer is not None and self._process is not None and self._tree is not None
        system = SystemCollector()
        watcher = AgentWatcher(self.socket_dir)
        started = time.monotonic()
        next_at = started + self.interval
        try:
            while not self._stopping.wait(max(0.0, next_at - time.monotonic())):
                now = time.monotonic()
                next_at += self.interval
                if next_at < now:  # fell behind (a slow disk, a stopped machine): skip, do not burst
                    next_at = now + self.interval
                sys_sample = system.sample()
                try:
                    proc_sample = self._process.sample()
                except CollectorError as exc:
                    self.ended = str(exc)
                    break
                try:
                    agent = watcher.fetch(self.pid, None)
                except (AgentError, OSError):
                    agent = None
                figures = None if agent is None else agent.figures
                proc_sample = replace(proc_sample, tree=self._tree.sample(proc_sample, figures))
                taken_at = time.time()
                self._writer.append(taken_at, interval_document(sys_sample, proc_sample, agent, taken_at))
                if self.duration is not None and time.monotonic() - started >= self.duration:
                    self.ended = f"{self.duration:g} s recorded"
                    break
        except RecordingError as exc:
            self.error = str(exc)
        except Exception as exc:
            log.exception("recording failed")
            self.error = f"recording failed: {type(exc).__name__}: {exc}"
        finally:
            watcher.close()
            self._writer.close()
            if self.on_finish is not None:
                try:
                    self.on_finish(self)
                except Exception:
                    log.exception("recording on_finish callback failed")


# -- reading ---------------------------------------------------------------------------------------------


def _db_message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return text.splitlines()[0] if text else type(exc).__name__


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
            raise RecordingError(f"{path} is not a readable perftop recording: {_db_message(exc)}") from None
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
        return int(self.meta["pid"])

    @property
    def interval(self) -> float:
        return float(self.meta["interval"])

    def __len__(self) -> int:
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
            raise RecordingError(f"{self.path}: cannot read interval {row_id}: {_db_message(exc)}") from None
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
        self._engine.dispose()


# -- from the recorded JSON back to the viewer's types ---------------------------------------------------


def system_from_json(doc: dict[str, Any]) -> SystemSample:
    """The SystemSample a recorded interval holds."""
    s, extra = doc["system"], doc["recording"]
    pressure = s.get("pressure")
    return SystemSample(
        taken_at=float(extra.get("system_taken_at") or doc.get("taken_at") or 0.0),
        interval_s=float(extra.get("interval_s") or 0.0),
        cpu_percent=float(s["cpu_percent"]),
        per_cpu_percent=tuple(float(x) for x in s["per_cpu_percent"]),
        load_avg=(float(s["load_avg"][0]), float(s["load_avg"][1]), float(s["load_avg"][2])),
        memory=MemoryInfo(**s["memory"]),
        swap=SwapInfo(**s["swap"]),
        disk_io=DiskIO(**s["disk_io"]),
        net_io=NetIO(**s["net_io"]),
        pressure=None if pressure is None else {name: _pressure(p) for name, p in pressure.items()},
    )


def _pressure(p: dict[str, Any]) -> Pressure:
    some, full = p["some"], p.get("full")
    return Pressure(
        some_avg10=some["avg10"],
        some_avg60=some["avg60"],
        some_avg300=some["avg300"],
        full_avg10=None if full is None else full["avg10"],
        full_avg60=None if full is None else full["avg60"],
        full_avg300=None if full is None else full["avg300"],
    )


def process_from_json(doc: dict[str, Any]) -> ProcessSample:
    """The ProcessSample a recorded interval holds."""
    p, extra = doc["process"], doc["recording"]
    cgroup = p.get("cgroup")
    return ProcessSample(
        pid=int(p["pid"]),
        name=str(p["name"]),
        cmdline=tuple(p.get("cmdline") or ()),
        status=str(p.get("status", "")),
        username=str(p.get("username", "")),
        create_time=float(p.get("create_time") or 0.0),
        cpu_percent=float(p.get("cpu_percent") or 0.0),
        rss_bytes=int(p.get("rss_bytes") or 0),
        vms_bytes=int(p.get("vms_bytes") or 0),
        num_threads=int(p.get("num_threads") or 0),
        num_fds=p.get("num_fds"),
        num_connections=p.get("num_connections"),
        connections_sampled_at=extra.get("connections_sampled_at"),
        limits=tuple(
            Limit(name, lim.get("soft"), lim.get("hard"), lim.get("used"), _limit_units().get(name, ""))
            for name, lim in (p.get("limits") or {}).items()
        ),
        cgroup=None if cgroup is None else CgroupInfo(**cgroup),
        taken_at=float(extra.get("process_taken_at") or doc.get("taken_at") or 0.0),
        tree=tree_from_json(p.get("tree")),
    )


def tree_from_json(tree: Any) -> ProcessTree | None:
    """The process tree (totals and worker rows, departed ones marked gone) a recorded interval holds;
    None where the process had no children then (or the recording predates trees)."""
    if not isinstance(tree, dict):
        return None
    return ProcessTree(
        pids=tuple(int(p) for p in tree.get("pids") or ()),
        cpu_percent=float(tree.get("cpu_percent") or 0.0),
        rss_bytes=int(tree.get("rss_bytes") or 0),
        pss_bytes=tree.get("pss_bytes"),
        num_threads=int(tree.get("num_threads") or 0),
        num_fds=tree.get("num_fds"),
        num_connections=tree.get("num_connections"),
        workers=tuple(
            WorkerRow(
                pid=int(w["pid"]),
                ppid=int(w.get("ppid") or 0),
                name=str(w.get("name") or ""),
                started_at=float(w.get("started_at") or 0.0),
                cpu_percent=float(w.get("cpu_percent") or 0.0),
                rss_bytes=int(w.get("rss_bytes") or 0),
                num_threads=int(w.get("num_threads") or 0),
                has_agent=bool(w.get("has_agent")),
                requests=w.get("requests"),
                requests_per_s=w.get("requests_per_s"),
                p99_ms=w.get("p99_ms"),
                gone=bool(w.get("gone")),
                gone_at=w.get("gone_at"),
            )
            for w in tree.get("workers") or []
            if isinstance(w, dict) and "pid" in w
        ),
        departed=int(tree.get("departed") or 0),
    )


def process_row_from_json(doc: dict[str, Any]) -> ProcessRow:
    p = process_from_json(doc)
    return ProcessRow(
        p.pid, p.name, " ".join(p.cmdline), p.username, p.cpu_percent, p.rss_bytes, p.num_threads
    )


def agent_from_json(doc: dict[str, Any]) -> AgentView | None:
    """The AgentView (since start) a recorded interval holds, or None where the process had no agent."""
    from perftop.collectors.agent_view import AgentView

    extra = doc["recording"].get("agent")
    if not isinstance(extra, dict):
        return None
    sketches: dict[str, Sketch] = {}
    for name, data in (extra.get("sketches") or {}).items():
        with contextlib.suppress(SketchError):
            sketches[name] = unpack_sketch(data)
    queries = None
    if isinstance(extra.get("queries"), dict):
        queries = {
            "queries": doc.get("queries") or [],
            "slow_queries": doc.get("slow_queries") or [],
            "pool": doc.get("pool"),
            **extra["queries"],
        }
    agent = doc.get("agent") or {}
    return AgentView(
        info=dict(
            extra.get("info") or {k: v for k, v in agent.items() if k not in ("merged_pids", "gone_pids")}
        ),
        pids=tuple(int(p) for p in agent.get("merged_pids") or ()),
        window_s=extra.get("window_s"),
        timings=dict(doc.get("timings") or {}),
        sketches=sketches,
        counters=dict(doc.get("counters") or {}),
        gauges=dict(doc.get("gauges") or {}),
        gc=extra.get("gc"),
        queries=queries,
        per_pid={int(pid): rows for pid, rows in (extra.get("per_pid") or {}).items()},
        errors_by_type=dict(extra.get("errors_by_type") or {}),
        overflow=dict(extra.get("overflow") or {}),
        taken_at=float(extra.get("taken_at") or doc.get("taken_at") or 0.0),
        gone_pids=tuple(int(p) for p in agent.get("gone_pids") or ()),
    )


def sketch_difference(later: Sketch, earlier: Sketch) -> Sketch:
    """The values `later` holds that `earlier` did not: both are since-start sketches of one metric, so
    the difference of their bucket counts is the distribution of what happened in between.

    The exact min and max of that span are unknown unless they moved; otherwise they are taken from the
    outermost buckets left (so quantiles stay within the bucket accuracy)."""
    out = Sketch()
    before = earlier.bins
    for i, n in later.bins.items():
        d = n - before.get(i, 0)
        if d > 0:
            out.add_bin(i, d)
    out.zero = max(0, later.zero - earlier.zero)
    bins = out.bins
    out.count = out.zero + sum(bins.values())
    if out.count == 0:
        return Sketch()
    out.errors = min(out.count, max(0, later.errors - earlier.errors))
    out.sum = max(0.0, later.sum - earlier.sum)
    if bins:
        low, high = bucket_value(min(bins)), bucket_value(max(bins))
        out.min = 0.0 if out.zero else (later.min if later.min < earlier.min else min(low, later.max))
        out.max = later.max if later.max > earlier.max else max(min(high, later.max), out.min)
    else:
        out.min = out.max = 0.0
    return out


def agent_over_window(now: AgentView, base: AgentView | None, span: float, window: float) -> AgentView:
    """`now` (since start) narrowed to what happened since `base`, `span` seconds earlier: sketches and
    counters are differences; gauges, GC and SQL stay as recorded at `now`."""
    from perftop.collectors.agent_client import timing_rows
    from perftop.collectors.agent_view import AgentView

    sketches: dict[str, Sketch] = {}
    for name, sketch in now.sketches.items():
        before = None if base is None else base.sketches.get(name)
        sketches[name] = sketch.copy() if before is None else sketch_difference(sketch, before)
    stats = {
        "span_s": span,
        "timings": {name: {"sketch": sk.to_dict()} for name, sk in sketches.items() if sk.count},
    }
    counters: dict[str, dict[str, Any]] = {}
    for name, counter in now.counters.items():
        was = (base.counters.get(name) if base is not None else None) or {}
        value = counter.get("value") or 0
        delta = value - (was.get("value") or 0)
        counters[name] = {"value": value, "rate_per_s": delta / span if span > 0 else 0.0}
    return AgentView(
        info=now.info,
        pids=now.pids,
        window_s=window,
        timings=timing_rows(stats),
        sketches={name: sk for name, sk in sketches.items() if sk.count},
        counters=counters,
        gauges=now.gauges,
        gc=now.gc,
        queries=now.queries,
        per_pid={},
        errors_by_type=now.errors_by_type,
        overflow=now.overflow,
        taken_at=now.taken_at,
    )
