"""Recordings of one process: `perftop record` writes them, `perftop replay` (and the TUI's `r`) reads them.

A recording is an SQLite file with one row per interval holding the document `perftop snapshot --json`
prints (system, process, agent) plus what the TUI needs that the document leaves out (each timing's merged
sketch, for histograms and windows). The package, lowest layer first:

- `errors`: RecordingError (one line fit for `perftop: ...`) and what a malformed document raises.
- `codec`: an interval's document as compressed JSON, and the keyframe/delta reductions between rows.
- `frames`: from a recorded document back to the viewer's types, and the window maths replay needs.
- `store`: the SQLite file (SQLAlchemy Core): RecordingWriter, size cap, RecordingReader.
- `recorder`: the Recorder thread that samples a process into a RecordingWriter.

The commands themselves are in `perftop.commands.record` and `perftop.commands.replay`.
"""
