"""An ASGI app behind perftop.asgi.Middleware, served by uvicorn on 127.0.0.1 (for the middleware tests).

Usage: python mw_asgi_app.py SOCKET_DIR
Starts the agent, serves on an ephemeral port (with lifespan on), writes the port on stdout once the
app's startup ran, serves until killed. Routes:
  GET /orders/N            Starlette-style `path_params` {"order_id": N}
  GET /api/users/N         FastAPI-style `scope["route"]` with path_format `/api/users/{user_id}`
  GET /plain/N             nothing from a framework: perftop normalizes the path
  GET /stream              a body in three chunks (more_body)
  GET /boom -> raises, GET /busy -> 503, anything else -> 404
"""

import socket
import sys
import types
from typing import Any

import uvicorn

import perftop
from perftop.asgi import Middleware

started: list[bool] = []


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                started.append(True)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    parts = path.strip("/").split("/")
    status, chunks = 200, [b"ok\n"]
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/busy":
        status = 503
    elif path == "/stream":
        chunks = [b"a", b"b", b"c\n"]
    elif parts[0] == "orders" and len(parts) == 2:
        scope["path_params"] = {"order_id": parts[1]}
    elif parts[:2] == ["api", "users"] and len(parts) == 3:
        scope["route"] = types.SimpleNamespace(
            path_format="/api/users/{user_id}", path="/api/users/{user_id:int}"
        )
    elif parts[0] != "plain":
        status = 404
    await send(
        {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]}
    )
    for i, chunk in enumerate(chunks):
        await send({"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1})


def main() -> None:
    perftop.start(socket_dir=sys.argv[1])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(Middleware(app), lifespan="on", log_level="critical", access_log=False)
    server = uvicorn.Server(config)

    original_startup = server.startup

    async def startup(sockets: Any = None) -> None:
        await original_startup(sockets=sockets)
        assert started, "the lifespan startup did not reach the app"
        sys.stdout.write(f"{sock.getsockname()[1]}\n")
        sys.stdout.flush()

    server.startup = startup  # type: ignore[method-assign]
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
