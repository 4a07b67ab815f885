"""ASGI middleware, the import path users have: `app = perftop.asgi.Middleware(app)`.

The implementation lives in `perftop.agent.asgi` (it runs inside the app, stdlib only, like the agent).
"""

from perftop.agent.asgi import Middleware, timed

__all__ = ["Middleware", "timed"]
