"""Time from `inject()` to the injected agent answering a request, per CPython and target state.

Run by hand: .venv/bin/python tests/perf/bench_inject.py [--runs N]. Goal (issue 6): within 2 s.
Each run starts a fresh `python -S tests/targets/inj_target.py MODE` (sleeping in time.sleep, or busy in
pure-Python arithmetic), injects, then times until an `info` request is answered; medians and maxima.
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
from perftop.inject import InjectError, inject  # noqa: E402

TARGET = str(REPO / "tests" / "targets" / "inj_target.py")
GOAL_S = 2.0


def interpreters() -> list[str]:
    found = [sys.executable]
    for minor in (10, 12, 13):
        match = sorted(
            glob.glob(
                f"{os.environ.get('PYENV_ROOT', '/root/.pyenv')}/versions/3.{minor}.*/bin/python3.{minor}"
            )
        )
        if match:
            found.append(match[0])
    return found


def one_run(exe: str, mode: str, sock_dir: str) -> float:
    """Seconds from calling inject() to the agent's answer to `info` (infinity if inject() failed)."""
    stop = os.path.join(sock_dir, f"stop-{os.getpid()}")
    proc = subprocess.Popen(
        [exe, "-S", TARGET, mode, stop], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, cwd="/"
    )
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        proc.stdout.readline()
        t0 = time.perf_counter()
        try:
            path = inject(pid, sock_dir)
        except InjectError as exc:
            sys.stderr.write(f"  failed: {exc}\n")
            return float("inf")
        with AgentClient(path) as client:
            client.call("info")
        elapsed = time.perf_counter() - t0
        Path(stop).touch()
        if proc.wait(30) != 0:
            raise RuntimeError(f"target {pid} did not exit normally")
        os.unlink(stop)
        return elapsed
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
            for mode in ("sleep", "busy"):
                times = [one_run(exe, mode, sock_dir) for _ in range(args.runs)]
                worst = max(worst, max(times))
                sys.stdout.write(
                    f"CPython {version:<8} {mode:<6} median {statistics.median(times) * 1000:7.0f} ms"
                    f"   max {max(times) * 1000:7.0f} ms   ({args.runs} runs)\n"
                )
    verdict = "OK" if worst <= GOAL_S else "OVER"
    sys.stdout.write(
        f"goal: agent answering within {GOAL_S:.0f} s -> {verdict} (worst {worst * 1000:.0f} ms)\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
