"""How big a recording of the demo service grows: goal <= 20 MB for an hour at 1 s intervals.

Starts the built-in demo service (`python -m perftop.launch.demo_service`:
6 endpoints, SQL, GC, async), records it with
`Recorder` at --interval for --duration seconds (default 3 minutes), then extrapolates to an hour from the
bytes the rows of the last third of the run took (sketches gain bins as tails fill in, so later rows are
the larger ones), and reports the CPU time the recorder spent per interval.

Run: .venv/bin/python tests/perf/bench_record.py [--duration 180] [--interval 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from perftop.recording.recorder import Recorder  # noqa: E402
from tests.perf._common import demo_service  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=180.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="perftop-bench-record-") as tmp:
        with demo_service(tmp) as demo:
            path = os.path.join(tmp, "demo.rec")
            cpu_before = resource.getrusage(resource.RUSAGE_SELF)
            recorder = Recorder(demo.pid, path, args.interval, tmp, duration=args.duration).start()
            started = time.monotonic()
            growth: list[tuple[int, int]] = []  # (intervals written, file size) once a second
            while not recorder.wait(1.0):
                growth.append((recorder.intervals, os.path.getsize(path)))
            wall = time.monotonic() - started
            cpu_after = resource.getrusage(resource.RUSAGE_SELF)
            if recorder.error:
                raise SystemExit(recorder.error)
        size = os.path.getsize(path)
        with sqlite3.connect(path) as db:
            rows = db.execute("SELECT id, length(payload) FROM samples ORDER BY id").fetchall()
            page = db.execute("PRAGMA page_size").fetchone()[0]
        payloads = [n for _, n in rows]
        last = payloads[len(payloads) * 2 // 3 :]
        per_row = sum(last) / len(last)
        # How fast the file grew over the last third of the run, in bytes per interval (pages included).
        (n0, size0), (n1, size1) = growth[len(growth) * 2 // 3], growth[-1]
        file_per_row = (size1 - size0) / max(1, n1 - n0)
        hour_rows = 3600 / args.interval
        hour_mb = (size + (hour_rows - len(rows)) * file_per_row) / 1e6
        cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
        sys.stdout.write(
            f"recorded the demo for {wall:.0f} s every {args.interval:g} s: {len(rows)} intervals, "
            f"file {size / 1e6:.2f} MB (page {page} B)\n"
            f"payload per interval: mean {sum(payloads) / len(payloads) / 1e3:.2f} kB, last third "
            f"{per_row / 1e3:.2f} kB; file growth over the last third {file_per_row / 1e3:.2f} kB/interval\n"
            f"extrapolated to one hour ({hour_rows:.0f} intervals): {hour_mb:.1f} MB (goal <= 20 MB)\n"
            f"recorder CPU: {cpu / max(1, len(rows)) * 1000:.1f} ms per interval\n"
        )


if __name__ == "__main__":
    main()
