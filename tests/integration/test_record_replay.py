"""`perftop record` on real processes: what a recording holds, that a SIGKILLed recorder leaves a readable
file, that the size cap holds while recording goes on, and that foreign or damaged files are one-line
errors for `perftop replay`."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import sqlite3
import zlib
from contextlib import ExitStack
from pathlib import Path

import pytest

from perftop.recording.errors import RecordingError
from perftop.recording.frames import agent_from_json, process_from_json, system_from_json
from perftop.recording.store import FORMAT_VERSION, RecordingReader, RecordingWriter
from tests.helpers import short_tmp_dir, wait_for
from tests.targets.agent_harness import Target
from tests.targets.exp_procs import Command, run

SCRIPT = Path(__file__).resolve().parents[1] / "targets" / "exp_target.py"
SNAPSHOT_KEYS = {
    "perftop_version",
    "taken_at",
    "hostname",
    "system",
    "process",
    "agent",
    "timings",
    "counters",
    "gauges",
    "queries",
    "slow_queries",
    "pool",
    "gc",
}


def rows_in(path: str) -> list[tuple[int, float]]:
    """(id, taken_at) of every recorded interval, read with plain sqlite3 while the recorder may write."""
    if not os.path.exists(path):
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
        try:
            return db.execute("SELECT id, taken_at FROM samples ORDER BY id").fetchall()
        except sqlite3.OperationalError:
            return []  # the schema is not there yet


def check_every_frame(reader: RecordingReader, pid: int) -> None:
    for index in range(len(reader)):
        doc = reader.frame(index)
        assert system_from_json(doc).memory.total_bytes > 0
        assert process_from_json(doc).pid == pid


def test_recording_holds_the_snapshot_document_and_the_sketches(
    stack: ExitStack, sock_dir: str, tmp_path: Path
) -> None:
    app = stack.enter_context(Target(sock_dir, "rec", script=SCRIPT))
    assert app.cmd("work 42") == "done 42"
    assert app.cmd("sql t_orders:4") == "done"
    path = str(tmp_path / "run.rec")
    result = run(
        "record", "--pid", str(app.pid), "-o", path, "--interval", "0.2", "--duration", "1",
        "--socket-dir", sock_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "recorded" in result.stderr.splitlines()[-1]
    reader = RecordingReader(path)
    assert reader.meta["version"] == FORMAT_VERSION
    assert (reader.pid, reader.interval) == (app.pid, 0.2)
    assert reader.meta["hostname"] == os.uname().nodename
    assert len(reader) >= 4
    assert reader.times == sorted(reader.times)
    for index in range(len(reader)):
        doc = reader.frame(index)
        assert set(doc) >= SNAPSHOT_KEYS, set(doc) ^ SNAPSHOT_KEYS
        assert doc["taken_at"] == reader.times[index]
        assert doc["agent"]["name"] == "rec"
        assert doc["timings"]["work"]["count"] == 42
        view = agent_from_json(doc)
        assert view is not None and view.sketches["work"].count == 42
        assert any("t_orders" in q["fingerprint"] for q in doc["queries"])
        assert process_from_json(doc).limit("nofile") is not None
    # The first row is a keyframe: plain zlib JSON, readable without perftop.
    with sqlite3.connect(path) as db:
        key_id, blob = db.execute("SELECT key_id, payload FROM samples ORDER BY id LIMIT 1").fetchone()
    assert key_id is None
    assert zlib.decompress(blob).startswith(b'{"perftop_version"')


def test_a_sigkilled_recorder_leaves_a_readable_file(stack: ExitStack, sock_dir: str, tmp_path: Path) -> None:
    app = stack.enter_context(Target(sock_dir, "crash", script=SCRIPT))
    app.cmd("metrics 10 300")
    path = str(tmp_path / "crash.rec")
    recorder = stack.enter_context(
        Command("record", "--pid", str(app.pid), "-o", path, "--interval", "0.05", "--socket-dir", sock_dir)
    )
    recorder.wait_line("recording PID")
    seen = wait_for(lambda: len(rows_in(path)) >= 25 and rows_in(path), timeout=60)
    os.kill(recorder.proc.pid, signal.SIGKILL)
    recorder.proc.wait(timeout=10)
    reader = RecordingReader(path)  # rolls back whatever the kill left half-written
    assert len(reader) >= len(seen)
    check_every_frame(reader, app.pid)
    last = agent_from_json(reader.frame(len(reader) - 1))
    assert last is not None and last.sketches["m009"].count == 300


def test_recording_ends_when_the_process_exits(stack: ExitStack, sock_dir: str, tmp_path: Path) -> None:
    app = stack.enter_context(Target(sock_dir, "short", script=SCRIPT))
    path = str(tmp_path / "short.rec")
    recorder = stack.enter_context(
        Command("record", "--pid", str(app.pid), "-o", path, "--interval", "0.1", "--socket-dir", sock_dir)
    )
    wait_for(lambda: len(rows_in(path)) >= 3, timeout=30)
    app.proc.stdin.write("exit\n")  # type: ignore[union-attr]
    app.proc.stdin.flush()  # type: ignore[union-attr]
    assert recorder.proc.wait(timeout=30) == 0
    last = recorder.wait_line(r"recorded (\d+) intervals")
    assert "exited" in last.string
    assert len(RecordingReader(path)) == int(last.group(1))
    # An existing file is not overwritten unless asked to.
    result = run("record", "--pid", str(os.getpid()), "-o", path)
    assert result.returncode == 2 and "already exists" in result.stderr


def test_the_size_cap_holds_while_recording_goes_on(stack: ExitStack, sock_dir: str, tmp_path: Path) -> None:
    app = stack.enter_context(Target(sock_dir, "big", script=SCRIPT))
    app.cmd("metrics 20 300")  # a few kB per interval: the 0.1 MB cap is reached in seconds
    path = str(tmp_path / "capped.rec")
    cap = 100_000
    recorder = stack.enter_context(
        Command(
            "record", "--pid", str(app.pid), "-o", path, "--interval", "0.05", "--max-mb", "0.1",
            "--socket-dir", sock_dir,
        )
    )  # fmt: skip
    sizes: list[int] = []

    def dropped_and_kept_going() -> bool:
        sizes.append(os.path.getsize(path) if os.path.exists(path) else 0)
        rows = rows_in(path)
        return bool(rows) and rows[0][0] > 60 and rows[-1][0] > rows[0][0] + 10

    wait_for(dropped_and_kept_going, timeout=90, interval=0.05)
    first_kept = rows_in(path)[0][0]
    wait_for(lambda: sizes.append(os.path.getsize(path)) or rows_in(path)[0][0] > first_kept + 10, timeout=60)
    assert max(sizes) <= cap, max(sizes)
    recorder.proc.send_signal(signal.SIGTERM)
    assert recorder.proc.wait(timeout=30) == 0
    assert "oldest dropped" in recorder.wait_line(r"recorded \d+ intervals").string
    assert os.path.getsize(path) <= cap
    reader = RecordingReader(path)  # whole groups were dropped: every row left decodes
    check_every_frame(reader, app.pid)


def test_rows_stored_against_their_keyframe_decode_to_what_was_written(tmp_path: Path) -> None:
    source = RecordingReader(str(recording_of_a_target(tmp_path)))
    docs = [source.frame(i) for i in range(len(source))]
    # Make the slow-query and sketch deltas non-trivial: slow queries that come and go, sketches that grow.
    for i, doc in enumerate(docs):
        doc["slow_queries"] = [
            {"fingerprint": f"SELECT {k}", "duration_ms": 30.0 + k, "at": 1000.0 + k, "call_site": None}
            for k in range(max(0, i - 5), i + 3)
        ][::-1]
    expected = copy.deepcopy(docs)
    path = str(tmp_path / "copy.rec")
    writer = RecordingWriter(path, {"pid": 1, "interval": 1.0, "started_at": 0.0}, 10_000_000)
    for i, doc in enumerate(docs):
        writer.append(float(i), doc)
    writer.close()
    assert docs == expected  # writing does not change the caller's documents
    copy_reader = RecordingReader(path)
    assert [copy_reader.frame(i) for i in range(len(copy_reader))] == expected


_RECORDING: dict[str, Path] = {}


def recording_of_a_target(tmp_path: Path) -> Path:
    """A short recording of a real target (made once per test session, copied for each caller)."""
    if "path" not in _RECORDING:
        with short_tmp_dir() as sock_dir, Target(sock_dir, "src", script=SCRIPT) as app:
            app.cmd("metrics 6 200")
            app.cmd("sql t_a:3")
            path = tmp_path / "source.rec"
            result = run(
                "record", "--pid", str(app.pid), "-o", str(path), "--interval", "0.05", "--duration", "2",
                "--socket-dir", sock_dir,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
        _RECORDING["path"] = path
    copied = tmp_path / f"copy-{len(os.listdir(tmp_path))}.rec"
    shutil.copy(_RECORDING["path"], copied)
    return copied


def assert_one_line_error(path: Path | str, fragment: str) -> None:
    result = run("replay", str(path), timeout=60)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("perftop: ") and fragment in lines[0], lines[0]


def test_replay_of_foreign_or_damaged_files_is_a_one_line_error(tmp_path: Path) -> None:
    good = recording_of_a_target(tmp_path)
    RecordingReader(str(good))  # the original opens: what follows is about the damage

    truncated = tmp_path / "truncated.rec"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    assert_one_line_error(truncated, "truncated.rec")

    cut_short = tmp_path / "header-only.rec"
    cut_short.write_bytes(data[:100])
    assert_one_line_error(cut_short, "header-only.rec")

    empty = tmp_path / "empty.rec"
    empty.write_bytes(b"")
    assert_one_line_error(empty, "not a perftop recording (an empty file)")

    text = tmp_path / "notes.txt"
    text.write_text("this is not a recording\n" * 100)
    assert_one_line_error(text, "not a perftop recording (not an SQLite database)")

    other_db = tmp_path / "other.db"
    with sqlite3.connect(other_db) as db:
        db.execute("CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)")
    assert_one_line_error(other_db, "an SQLite database but not a perftop recording")

    future = recording_of_a_target(tmp_path)
    with sqlite3.connect(future) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'version'")
    assert_one_line_error(future, "format 99")

    assert_one_line_error(tmp_path / "missing.rec", "cannot open")
    with pytest.raises(RecordingError):
        RecordingReader(str(truncated))
