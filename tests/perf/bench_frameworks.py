"""Cost per request of perftop's zero-code framework timing, with the framework's own test client.

Flask and Starlette (FastAPI's base) apps of one route answer N requests through their test clients, bare
and then with `perftop.agent.frameworks` patched in as `perftop run` does it, alternating rounds in one
process; prints the median per-request cost of each and the difference (goal: at most +5 µs).

    .venv/bin/python tests/perf/bench_frameworks.py [--requests 5000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def flask_client() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get("/user/<name>")
    def user(name: str) -> str:
        return name

    return app.test_client()


class AsgiClient:
    """Drives an ASGI app in one event loop with no server or thread between (the test client's portal
    thread adds more noise than the cost measured)."""

    def __init__(self, app: Any) -> None:
        import asyncio

        self.app = app
        self.loop = asyncio.new_event_loop()

    def get(self, path: str) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            return None

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"bench")],
            "server": ("bench", 80),
            "client": ("127.0.0.1", 1),
        }
        self.loop.run_until_complete(self.app(scope, receive, send))


def starlette_client() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def user(request: Any) -> PlainTextResponse:
        return PlainTextResponse(request.path_params["name"])

    return AsgiClient(Starlette(routes=[Route("/user/{name}", user)]))


def per_request_us(get: Callable[[str], Any], n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        get(f"/user/u{i % 50}")
    return (time.perf_counter() - t0) / n * 1e6


def unpatch(cls: Any) -> Any:
    original = cls.__dict__["__call__"]
    return getattr(original, "__wrapped__", original)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    import flask
    import starlette.applications

    from perftop.agent import frameworks

    frameworks.instrument_module("flask", flask)
    frameworks.instrument_module("starlette.applications", starlette.applications)
    cases = [("flask", flask.Flask, flask_client()), ("starlette", starlette.applications.Starlette, None)]
    for name, cls, client in cases:
        client = client or starlette_client()
        patched = cls.__dict__["__call__"]
        bare = unpatch(cls)
        times: dict[str, list[float]] = {"bare": [], "perftop": []}
        for _ in range(args.rounds):
            for label, call in (("bare", bare), ("perftop", patched)):
                cls.__call__ = call
                per_request_us(client.get, 200)
                times[label].append(per_request_us(client.get, args.requests))
        cls.__call__ = patched
        b, p = statistics.median(times["bare"]), statistics.median(times["perftop"])
        sys.stdout.write(f"{name}: bare {b:.1f} µs, with perftop {p:.1f} µs per request: +{p - b:.1f} µs\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
