"""WSGI middleware, the import path users have: `app = perftop.wsgi.Middleware(app)`.

The implementation lives in `perftop.agent.wsgi` (it runs inside the app, stdlib only, like the agent).
"""

from perftop.agent.wsgi import NOT_FOUND_ROUTE, Middleware, ServerError, normalize_path, timed

__all__ = ["NOT_FOUND_ROUTE", "Middleware", "ServerError", "normalize_path", "timed"]
