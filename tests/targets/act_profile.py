"""Profile target: one deliberately hot function among several, on a few named threads.

Threads: app-hot loops hot(); app-warm runs warm() briefly then waits; app-idle waits on an Event;
app-sleepy calls time.sleep(); the main thread reads commands.
Commands: spawn_hot (start "app-late" running hot() in a loop); churn (start a thread that keeps creating
short-lived threads); getprofile (every looping thread reports its sys.getprofile()); profiler_active
(whether a profile hook or monitoring tool is installed right now); app_hook {"on"} (install, remove or
just report the app's own threading.setprofile hook); sigprof {"own"} (report SIGPROF's handler and
ITIMER_PROF, or install/remove the app's own handler); bursts {"seconds", "ms"} (the main thread alternates
ms of pure Python and ms in select()).
"""

from __future__ import annotations

import select
import signal
import sys
import threading
import time
from typing import Any

from act_harness import Harness, Probe

probe = Probe()
idle_event = threading.Event()


def hot(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7  # HOT-LINE
    return total


def warm() -> int:
    return sum(range(2_000))


def cold(values: list[int]) -> int:
    return max(values)


def hot_loop() -> None:
    probe.register()
    while True:
        hot(20_000)
        probe.check()


def warm_loop() -> None:
    probe.register()
    while True:
        warm()
        cold([1, 2, 3])
        idle_event.wait(0.01)
        probe.check()


def idle_loop() -> None:
    probe.register()
    while True:
        idle_event.wait(0.05)
        probe.check()


def sleepy_loop() -> None:
    probe.register()
    while True:
        time.sleep(0.05)
        probe.check()


def churn_loop() -> None:
    while True:
        worker = threading.Thread(target=warm, name="app-short", daemon=True)
        worker.start()
        worker.join()


def spawn_hot(args: dict[str, Any]) -> str:
    threading.Thread(target=hot_loop, name=args.get("name", "app-late"), daemon=True).start()
    return "started"


def churn(args: dict[str, Any]) -> str:
    threading.Thread(target=churn_loop, name="app-churn", daemon=True).start()
    return "started"


def getprofile(args: dict[str, Any]) -> dict[str, Any]:
    return {"threads": probe.ask(), "threading_hook": repr(threading.getprofile())}


def app_profile_hook(frame: Any, event: str, arg: Any) -> None:
    """The app's own profile hook (as an APM tool might install) that perftop must not replace."""


def app_hook(args: dict[str, Any]) -> str:
    """Install ({"on": true}) or remove ({"on": false}) the app's hook; without "on", only report it."""
    if "on" in args:
        threading.setprofile(app_profile_hook if args["on"] else None)
    return repr(threading.getprofile())


def profiler_active(args: dict[str, Any]) -> bool:
    if threading.getprofile() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)
    return monitoring is not None and monitoring.get_tool(monitoring.PROFILER_ID) is not None


def app_sigprof(signum: int, frame: Any) -> None:
    """The app's own SIGPROF handler, which perftop must leave in place."""


def sigprof(args: dict[str, Any]) -> dict[str, Any]:
    """Report SIGPROF's handler and the ITIMER_PROF timer; {"own": true/false} installs/removes the app's."""
    if "own" in args:
        signal.signal(signal.SIGPROF, app_sigprof if args["own"] else signal.SIG_DFL)
    return {"handler": repr(signal.getsignal(signal.SIGPROF)), "timer": signal.getitimer(signal.ITIMER_PROF)}


def burst_spin(until: float) -> int:
    total = 0
    while time.perf_counter() < until:
        total += 1
    return total


def burst_wait(seconds: float) -> None:
    select.select([], [], [], seconds)


def bursts(args: dict[str, Any]) -> int:
    """On the main thread for {"seconds"}: {"ms"} of pure Python, then as long in select(); returns cycles."""
    end = time.perf_counter() + float(args["seconds"])
    step = float(args["ms"]) / 1000.0
    cycles = 0
    while time.perf_counter() < end:
        burst_spin(time.perf_counter() + step)
        burst_wait(step)
        cycles += 1
    return cycles


def main() -> None:
    for target, name in (
        (hot_loop, "app-hot"),
        (warm_loop, "app-warm"),
        (idle_loop, "app-idle"),
        (sleepy_loop, "app-sleepy"),
    ):
        threading.Thread(target=target, name=name, daemon=True).start()
    Harness(
        {
            "spawn_hot": spawn_hot,
            "churn": churn,
            "getprofile": getprofile,
            "profiler_active": profiler_active,
            "app_hook": app_hook,
            "sigprof": sigprof,
            "bursts": bursts,
        }
    ).serve()


if __name__ == "__main__":
    main()
