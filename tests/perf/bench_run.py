"""Start-up cost of `perftop run`: `python -c pass` against `perftop run -- python -c pass`.

Run by hand: .venv/bin/python tests/perf/bench_run.py [--runs N]. Goal (issue 6): at most +50 ms.
Also shows where the time goes: the bootstrap alone (the agent started in the child, no perftop CLI)
and `PERFTOP=0` (the CLI and exec, no agent).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
GOAL_MS = 50.0


def median_ms(cmd: Sequence[str], runs: int, env: dict[str, str] | None = None) -> float:
    """Median wall time of `cmd` over `runs` runs (after one warm-up run), in milliseconds."""
    times: list[float] = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdin=subprocess.DEVNULL, cwd=REPO)
        if i:
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    python = sys.executable
    perftop = [python, "-m", "perftop"]
    script = Path(python).with_name("perftop")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PERFTOP")}
    from perftop.launch.runner import agent_env

    base = median_ms([python, "-c", "pass"], args.runs, env)
    rows = [("python -c pass", base)]
    if script.exists():
        rows.append(
            (
                "perftop run -- python -c pass",
                median_ms([str(script), "run", "--", python, "-c", "pass"], args.runs, env),
            )
        )
    rows.append(
        (
            "python -m perftop run -- python -c pass",
            median_ms([*perftop, "run", "--", python, "-c", "pass"], args.runs, env),
        )
    )
    rows.append(
        (
            "  of which: bootstrap only (agent env)",
            median_ms([python, "-c", "pass"], args.runs, agent_env(None, None, env)),
        )
    )
    rows.append(
        (
            "  of which: CLI + exec only (PERFTOP=0)",
            median_ms([*perftop, "run", "--", python, "-c", "pass"], args.runs, {**env, "PERFTOP": "0"}),
        )
    )
    for label, ms in rows:
        extra = "" if label == rows[0][0] else f"  (+{ms - base:.1f} ms)"
        sys.stdout.write(f"{label:<45} {ms:8.1f} ms{extra}\n")
    worst = max(ms for label, ms in rows[1:3])
    verdict = "OK" if worst - base <= GOAL_MS else "OVER"
    sys.stdout.write(
        f"goal: at most +{GOAL_MS:.0f} ms -> {verdict} (+{worst - base:.1f} ms, median of {args.runs})\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
