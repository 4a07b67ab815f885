"""Time from `inject()` to the injected agent answering a request, per CPython and target state.

Run by hand: .venv/bin/python tests/perf/bench_inject.py [--runs N]. Goal (issue 6): within 2 s.
Each run starts a fresh `python -S tests/targets/inj_idle.py MODE` (waiting in time.sleep, select,
Event.wait or a read of stdin, or busy in pure-Python arithmetic), injects, then times until an `info`
request is answered; medians and maxima, and the path taken (pyinjector when its library is mapped in the
target, else gdb). The time includes the preflight on a throwaway process of the same interpreter.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from perftop.collectors.agent_client import AgentClient  # noqa: E402
from perftop.launch.inject import InjectError, inject  # noqa: E402

TARGET = str(REPO / "tests" / "targets" / "inj_idle.py")
MODES = ("sleep", "select", "event", "stdin", "busy")
GOAL_S = 2.0


def interpreters() -> list[str]:
    found = []
    for minor in (10, 11, 12, 13):
        match = sorted(
            glob.glob(
                f"{os.environ.get('PYENV_ROOT', '/root/.pyenv')}/versions/3.{minor}.*/bin/python3.{minor}"
            )
        )
        if match:
            found.append(match[-1])
    return found or [sys.executable]


def one_run(exe: str, mode: str, sock_dir: str) -> tuple[float, str]:
    """Seconds from calling inject() to the agent's answer to `info` (infinity if inject() failed), and
    the path taken."""
    proc = subprocess.Popen(
        [exe, "-S", TARGET, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/"
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        pid = int(proc.stdout.readline())
        proc.stdout.readline()
        time.sleep(0.1)
        t0 = time.perf_counter()
        try:
            path = inject(pid, sock_dir)
        except InjectError as exc:
            sys.stderr.write(f"  failed: {exc}\n")
            return float("inf"), "failed"
        with AgentClient(path) as client:
            client.call("info")
        elapsed = time.perf_counter() - t0
        used = "pyinjector" if "perftop-agent-loader" in Path(f"/proc/{pid}/maps").read_text() else "gdb"
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        if proc.wait(30) != 0:
            raise RuntimeError(f"target {pid} did not exit normally")
        return elapsed, used
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="ptbench") as sock_dir:
        for exe in interpreters():
            version = subprocess.run(
                [exe, "-c", "import sys; print(sys.version.split()[0])"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            for mode in MODES:
                runs = [one_run(exe, mode, sock_dir) for _ in range(args.runs)]
                times = [t for t, _ in runs]
                paths = sorted({p for _, p in runs})
                worst = max(worst, max(times))
                sys.stdout.write(
                    f"CPython {version:<8} {mode:<6} median {statistics.median(times) * 1000:7.0f} ms"
                    f"   max {max(times) * 1000:7.0f} ms   ({args.runs} runs, {'+'.join(paths)})\n"
                )
    verdict = "OK" if worst <= GOAL_S else "OVER"
    sys.stdout.write(
        f"goal: agent answering within {GOAL_S:.0f} s -> {verdict} (worst {worst * 1000:.0f} ms)\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
