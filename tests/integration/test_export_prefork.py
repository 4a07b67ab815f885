"""`perftop export` of a pre-fork server whose workers are recycled: a real gunicorn (3 workers,
`--max-requests 20`) under `perftop run`, scraped over HTTP by a real `perftop export`.

Oracles: the requests the test sent, one at a time, and the worker that answered each (its PID is in the
answer): a worker answers 20 and exits, and gunicorn starts another.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import psutil
import pytest

from tests.helpers import wait_for
from tests.integration.test_export import Sample, scrape, value
from tests.integration.test_frameworks import CONTROL
from tests.integration.test_prefork import WORKERS, Server, start_server, stop_server
from tests.targets.exp_procs import Command

MAX_REQUESTS = 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = start_server(tmp_path, *CONTROL, "--max-requests", str(MAX_REQUESTS), "--max-requests-jitter", "0")
    yield s
    stop_server(s)


def _requests(found: list[Sample], pid: str) -> float:
    """The web requests a process's agent timed (its `http ...` timings)."""
    return sum(
        v
        for n, lab, v in found
        if n == "perftop_timing_seconds_count" and lab.get("pid") == pid and lab["metric"].startswith("http ")
    )


def _service(found: list[Sample], master: int) -> float:
    """The web requests of the service of `master`: all its processes', those that exited included."""
    return sum(
        v
        for n, lab, v in found
        if n == "perftop_service_timing_calls_total"
        and lab.get("pid") == str(master)
        and lab["metric"].startswith("http ")
    )


def test_a_recycled_worker_lingers_one_scrape_and_service_counts_never_go_back(server: Server) -> None:
    with ExitStack() as stack:
        export = stack.enter_context(
            Command("export", "--listen", "127.0.0.1:0", "--socket-dir", server.socket_dir, "--refresh", "0")
        )
        port = export.wait_line(r"exporting on http://[^:]+:(\d+)/metrics").group(1)
        url = f"http://127.0.0.1:{port}"
        first = scrape(url)
        base = _service(first, server.master)
        assert base == 1  # start_server's readiness check: one answered request
        # which worker answered it (it counts towards that one's --max-requests)
        answered = {pid: int(_requests(first, str(pid))) for pid in server.workers()}
        assert sum(answered.values()) == base
        totals: list[float] = []
        recycled: list[int] = []

        def scraped() -> list[Sample]:
            found = scrape(url)
            totals.append(_service(found, server.master))
            return found

        while len(recycled) < 2 * WORKERS:
            pid = server.get("/")
            answered[pid] = answered.get(pid, 0) + 1
            if answered[pid] < MAX_REQUESTS:
                if sum(answered.values()) % 10 == 0:
                    scraped()
                continue
            # This worker answered its last request: it exits, and leaves its final stats.
            wait_for(
                lambda pid=pid: not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie",
                60,
                "exit",
                interval=0.1,
            )
            wait_for(lambda pid=pid: pid not in server.worker_agents(), 60, "its socket to go", interval=0.1)
            recycled.append(pid)
            last = scraped()  # the first scrape since it went: its series once more, with its final counts
            assert value(last, "perftop_agent_up", pid=str(pid)) == 0
            assert _requests(last, str(pid)) == MAX_REQUESTS
            after = scraped()  # then they are dropped
            assert not [s for s in after if s[1].get("pid") == str(pid)]
            assert value(after, "perftop_service_workers_departed_total", pid=str(server.master)) == len(
                recycled
            )

        sent = sum(answered.values()) - base
        # every recycled worker answered MAX_REQUESTS, the readiness check among them where it answered it
        assert sent + base >= 2 * WORKERS * MAX_REQUESTS

        def settled() -> bool:
            found = scraped()
            return (
                totals[-1] == base + sent
                and value(found, "perftop_service_workers", pid=str(server.master)) == WORKERS
            )

        server.wait_ready()
        wait_for(
            settled, 60, f"the service's count to reach {base + sent} (counted {totals[-5:]})", interval=0.1
        )
        assert totals == sorted(totals), totals  # never backwards across six recycles
        found = scrape(url)
        served = value(found, "perftop_service_counter_total", pid=str(server.master), metric="app.served")
        assert served == base + sent


def test_workers_that_come_and_go_between_scrapes_still_count(tmp_path: Path) -> None:
    """With --max-requests 1 every worker exits after one request: most are never seen alive by a
    collection, and their counts reach the service through the final stats they leave."""
    server = start_server(tmp_path, *CONTROL, "--max-requests", "1", "--max-requests-jitter", "0")
    try:
        server.wait_ready()  # the worker that answered the readiness check has been replaced
        with Command(
            "export", "--listen", "127.0.0.1:0", "--socket-dir", server.socket_dir, "--refresh", "0"
        ) as export:
            port = export.wait_line(r"exporting on http://[^:]+:(\d+)/metrics").group(1)
            url = f"http://127.0.0.1:{port}"
            assert _service(scrape(url), server.master) == 0
            answered = [server.get("/") for _ in range(12)]
            assert len(set(answered)) == len(answered)  # a new worker each time
            server.wait_ready()
            seen: list[float] = []

            def settled() -> bool:
                seen.append(_service(scrape(url), server.master))
                return seen[-1] == len(answered)

            wait_for(
                settled,
                60,
                f"the service's count to reach {len(answered)} (counted {seen[-5:]})",
                interval=0.1,
            )
            assert seen == sorted(seen)
            found = scrape(url)
            assert value(found, "perftop_service_workers_departed_total", pid=str(server.master)) == 12
    finally:
        stop_server(server)
