"""A WSGI app behind perftop.wsgi.Middleware, served by wsgiref on 127.0.0.1 (for the middleware tests).

Usage: python mw_wsgi_app.py SOCKET_DIR
Starts the agent, serves on an ephemeral port, writes the port on stdout, serves until killed. Routes:
  GET /orders/N, GET /orders/N/items/M   plain paths: perftop normalizes them
  GET /items/N                           a Flask-style `werkzeug.request` with url_rule `/items/<int:item_id>`
  GET /shops/S/orders/N                  `wsgiorg.routing_args` with {"shop": S, "order": N}
  GET /reports/NAME                      named by the middleware's route_for
  POST /orders -> 201, GET /boom -> raises, GET /busy -> 503, anything else -> 404
"""

import sys
import types
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import perftop
from perftop.wsgi import Middleware


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
    parts = path.strip("/").split("/")
    status = "200 OK"
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/busy":
        status = "503 Service Unavailable"
    elif method == "POST" and path == "/orders":
        status = "201 Created"
    elif parts[0] == "items" and len(parts) == 2:
        environ["werkzeug.request"] = types.SimpleNamespace(
            url_rule=types.SimpleNamespace(rule="/items/<int:item_id>")
        )
    elif parts[0] == "shops" and len(parts) == 4:
        environ["wsgiorg.routing_args"] = ((), {"shop": parts[1], "order": parts[3]})
    elif parts[0] not in ("orders", "reports"):
        status = "404 Not Found"
    start_response(status, [("Content-Type", "text/plain")])
    return [b"ok\n"]


def route_for(environ: dict[str, Any]) -> str | None:
    return "/reports/{name}" if environ["PATH_INFO"].startswith("/reports/") else None


def main() -> None:
    perftop.start(socket_dir=sys.argv[1])
    server = make_server("127.0.0.1", 0, Middleware(app, route_for=route_for), handler_class=QuietHandler)
    sys.stdout.write(f"{server.server_port}\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
