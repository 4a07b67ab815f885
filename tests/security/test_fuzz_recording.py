"""Fuzzing the recording reader (`perftop/recording/`): a real recording of a real process, damaged at
random (bytes of the SQLite file, payloads of its rows, documents of the wrong shape), is read as replay
reads it. Only RecordingError may come out, with a one-line message; nothing hangs; an interval never
inflates past MAX_DOCUMENT_BYTES."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import zlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perftop.recording.codec import (
    MAX_DOCUMENT_BYTES,
    compress,
    decompress,
    dictionary_of,
    parse_document,
    restore_document,
)
from perftop.recording.errors import MALFORMED, RecordingError
from perftop.recording.frames import agent_from_json, process_from_json, system_from_json
from perftop.recording.store import RecordingReader
from tests.helpers import short_tmp_dir
from tests.targets.agent_harness import Target
from tests.targets.exp_procs import run

SCRIPT = Path(__file__).resolve().parents[1] / "targets" / "exp_target.py"
FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=20),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)


@pytest.fixture(scope="module")
def recording() -> Iterator[bytes]:
    """The bytes of a short recording of a real instrumented process."""
    with tempfile.TemporaryDirectory() as tmp, short_tmp_dir() as sockets:
        path = os.path.join(tmp, "source.rec")
        with Target(sockets, "src", script=SCRIPT) as app:
            app.cmd("metrics 3 50")
            app.cmd("sql t_a:2")
            result = run(
                "record", "--pid", str(app.pid), "-o", path, "--interval", "0.05", "--duration", "1",
                "--socket-dir", sockets,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
        yield Path(path).read_bytes()


def read_as_replay_does(path: str) -> None:
    """Open the recording and convert every interval, as `perftop replay` does; RecordingError only."""
    reader = RecordingReader(path)
    try:
        for i in range(len(reader)):
            doc = reader.frame(i)
            for convert in (system_from_json, process_from_json, agent_from_json):
                try:
                    convert(doc)
                except MALFORMED as exc:  # what the replay turns into a RecordingError
                    raise RecordingError(f"malformed ({exc!r})") from None
    finally:
        reader.close()


def only_recording_errors(path: str) -> None:
    try:
        read_as_replay_does(path)
    except RecordingError as exc:
        assert "\n" not in str(exc), str(exc)


@FUZZ
@given(st.binary(max_size=2000), st.none() | st.binary(max_size=200))
def test_arbitrary_payloads_only_raise_recording_error(blob: bytes, key: bytes | None) -> None:
    try:
        raw = decompress(blob, key)
    except RecordingError as exc:
        assert "\n" not in str(exc)
        return
    assert len(raw) <= MAX_DOCUMENT_BYTES
    try:
        restore_document(parse_document(raw), {})
    except RecordingError as exc:
        assert "\n" not in str(exc)
    except MALFORMED:
        pass  # the reader turns these into RecordingError (checked on real files below)


@pytest.mark.parametrize("size", [MAX_DOCUMENT_BYTES, MAX_DOCUMENT_BYTES + 1, 8 * MAX_DOCUMENT_BYTES])
def test_inflating_stops_at_the_cap(size: int) -> None:
    co = zlib.compressobj(9)
    blob = b"".join(co.compress(b"\0" * (1 << 20)) for _ in range(size >> 20))
    blob += co.compress(b"\0" * (size & ((1 << 20) - 1))) + co.flush()
    if size <= MAX_DOCUMENT_BYTES:
        assert len(decompress(blob, None)) == size
    else:
        with pytest.raises(RecordingError, match="inflates past"):
            decompress(blob, None)


@FUZZ
@given(st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=8)), min_size=1, max_size=6))
def test_a_recording_damaged_anywhere_only_raises_recording_error(
    recording: bytes, edits: list[tuple[float, bytes]]
) -> None:
    data = bytearray(recording)
    for where, new in edits:
        at = int(where * (len(data) - len(new)))
        data[at : at + len(new)] = new
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "damaged.rec")
        Path(path).write_bytes(bytes(data))
        only_recording_errors(path)


def mutate(doc: Any, data: st.DataObject, edits: int) -> Any:
    """`doc` with `edits` subtrees (found by walking from the root along drawn keys) replaced by any JSON."""
    for _ in range(edits):
        parent: Any = None
        key: Any = None
        node = doc
        while isinstance(node, (dict, list)) and node and data.draw(st.integers(0, 4)) > 0:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            parent, key = node, data.draw(st.sampled_from(keys))
            node = node[key]
        value = data.draw(json_values)
        if parent is None:
            doc = value
        else:
            parent[key] = value
    return doc


def payload_of(db: sqlite3.Connection, row_id: int) -> tuple[int | None, bytes]:
    key_id, blob = db.execute("SELECT key_id, payload FROM samples WHERE id = ?", (row_id,)).fetchone()
    return key_id, blob


@FUZZ
@given(st.sampled_from(["first", "middle", "last"]), st.integers(1, 4), st.data())
def test_real_documents_damaged_anywhere_only_raise_recording_error(
    recording: bytes, where: str, edits: int, data: st.DataObject
) -> None:
    """A real interval with a few of its fields (at any depth) replaced by JSON of any kind."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "shaped.rec")
        Path(path).write_bytes(recording)
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT id FROM samples ORDER BY id").fetchall()
            row_id = rows[{"first": 0, "middle": len(rows) // 2, "last": -1}[where]][0]
            key_id, blob = payload_of(db, row_id)
            dictionary = None
            if key_id is not None:
                dictionary = dictionary_of(parse_document(zlib.decompress(payload_of(db, key_id)[1])))
            doc = parse_document(decompress(blob, dictionary))
            damaged = mutate(doc, data, edits)
            payload = compress(json.dumps(damaged).encode(), dictionary)
            db.execute("UPDATE samples SET payload = ? WHERE id = ?", (payload, row_id))
        only_recording_errors(path)


@FUZZ
@given(st.sampled_from(["version", "pid", "interval", "started_at"]), json_values)
def test_meta_values_of_any_kind_only_raise_recording_error(recording: bytes, key: str, value: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "meta.rec")
        Path(path).write_bytes(recording)
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps(value), key))
        only_recording_errors(path)
