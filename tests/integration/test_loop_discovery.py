"""The agent finds a running asyncio loop nobody registered and records its lag."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from perftop.collectors.agent_client import AgentClient
from perftop.collectors.discovery import find_agent

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
        deadline = time.monotonic() + 20
        while (path := find_agent(app.pid, sockets)) is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with AgentClient(path) as client:
            lag = None
            while lag is None or lag["count"] < 3:
                assert time.monotonic() < deadline, "no asyncio.loop_lag timing appeared"
                time.sleep(0.5)
                lag = (
                    client.call("stats", {"window": None})["timings"]
                    .get("asyncio.loop_lag", {})
                    .get("sketch")
                )
        assert lag["max"] >= 200e6  # ns: the loop was blocked 250 ms at a time
    finally:
        app.kill()
        app.wait()
