"""The agent finds a running asyncio loop nobody registered and records its lag."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from perftop.collectors.agent_client import AgentClient
from perftop.collectors.discovery import find_agent
from tests.helpers import wait_for

APP = textwrap.dedent(
    """
    import asyncio, sys, time
    import perftop

    async def main():
        perftop.start(name="loop-app")
        sys.stdout.write("ready\\n")
        sys.stdout.flush()
        while True:
            await asyncio.sleep(0.05)
            time.sleep(0.25)  # blocks the loop: a lag of about 250 ms

    asyncio.run(main())
    """
)


def test_an_unregistered_loop_is_found_and_its_lag_recorded(tmp_path: Path) -> None:
    sockets = str(tmp_path / "sockets")
    app = subprocess.Popen(
        [sys.executable, "-c", APP],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PERFTOP_SOCKET_DIR": sockets},
    )
    try:
        assert app.stdout is not None and app.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 20  # for both waits
        path = wait_for(lambda: find_agent(app.pid, sockets), 20, "the app's agent", interval=0.05)
        with AgentClient(path) as client:

            def lagged() -> dict[str, Any]:
                """The loop lag's sketch once it holds three samples, else an empty dict."""
                timings = client.call("stats", {"window": None})["timings"]
                sketch: dict[str, Any] = timings.get("asyncio.loop_lag", {}).get("sketch") or {}
                return sketch if sketch.get("count", 0) >= 3 else {}

            left = deadline - time.monotonic()
            lag = wait_for(lagged, left, "three asyncio.loop_lag samples", interval=0.5)
        assert lag["max"] >= 200e6  # ns: the loop was blocked 250 ms at a time
    finally:
        app.kill()
        app.wait()
