"""`perftop record`: record a process (host, process, agent) into a SQLite file for `perftop replay`."""

from __future__ import annotations

import argparse
import math
import os
import signal
from typing import Any

from perftop.commands._args import fail, parse_pid, positive_seconds, say, seconds
from perftop.recording.errors import RecordingError
from perftop.recording.recorder import DEFAULT_MAX_MB, MIN_MAX_MB, Recorder


def _megabytes(text: str) -> float:
    """An argparse type: a size cap in MB, at least MIN_MAX_MB."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in MB, not {text!r}") from None
    if not MIN_MAX_MB <= value < math.inf:
        raise argparse.ArgumentTypeError(f"--max-mb must be at least {MIN_MAX_MB}, not {text}")
    return value


def add_record_parser(sub: Any) -> None:
    """Register `perftop record` on the CLI's subparsers."""
    p = sub.add_parser(
        "record",
        help="record a process (host, process, agent) to a file for `perftop replay`",
        description="Record PID every --interval seconds into a new SQLite file: one compressed row per "
        "interval, committed as it is written (a killed recorder leaves a readable file), oldest rows "
        "dropped to stay under --max-mb. Stops after --duration, when PID exits, or on Ctrl+C.",
    )
    p.add_argument("--pid", type=parse_pid, required=True, dest="record_pid", metavar="PID")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the recording file to create")
    p.add_argument("--interval", type=seconds, default=1.0, metavar="S", help="default 1.0")
    p.add_argument("--duration", type=positive_seconds, metavar="S", help="stop after S seconds")
    p.add_argument(
        "--max-mb", type=_megabytes, default=DEFAULT_MAX_MB, metavar="N", help="size cap (default 100 MB)"
    )
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.add_argument("--socket-dir", metavar="DIR", help="where agents' sockets are (default as the agent's)")


def run_record(args: argparse.Namespace) -> int:
    """`perftop record`: record until --duration, the process's exit, Ctrl+C or SIGTERM."""
    path = args.output
    if os.path.exists(path):
        if not args.force:
            return fail(f"{path} already exists (use --force to replace it)", 2)
        try:
            os.unlink(path)
        except OSError as exc:
            return fail(f"cannot replace {path}: {exc.strerror}", 2)
    recorder = Recorder(args.record_pid, path, args.interval, args.socket_dir, args.duration, args.max_mb)
    try:
        recorder.start()
    except RecordingError as exc:
        return fail(str(exc), 2)
    say(f"recording PID {args.record_pid} to {path} every {args.interval:g}s (Ctrl+C stops)")
    previous = signal.signal(signal.SIGTERM, lambda *_: recorder.stop(timeout=0))
    try:
        while not recorder.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        recorder.stop()
        signal.signal(signal.SIGTERM, previous)
    if recorder.error:
        return fail(recorder.error, 1)
    why = f" ({recorder.ended})" if recorder.ended else ""
    dropped = f", {recorder.dropped} oldest dropped for the size cap" if recorder.dropped else ""
    say(f"recorded {recorder.intervals} intervals to {path}{dropped}{why}")
    return 0
