"""A plain Flask app that knows nothing of perftop (the zero-code tests serve it with gunicorn and flask run).

With PERFTOP_TEST_WRAP=1 it also wraps itself in perftop.wsgi.Middleware by hand, as an app that adopted
the middleware would: a request must still be timed once.
"""

import os
import time

from flask import Blueprint, Flask, abort

app = Flask(__name__)
api = Blueprint("api", __name__, url_prefix="/api")


@app.get("/user/<username>")
def user(username: str) -> str:
    return f"hello {username}"


@app.route("/orders/<int:order_id>", methods=["GET", "POST"])
def order(order_id: int) -> str:
    return str(order_id)


@app.get("/sleep/<int:ms>")
def sleep(ms: int) -> str:
    time.sleep(ms / 1000)
    return "slept"


@app.get("/boom")
def boom() -> str:
    raise RuntimeError("boom")


@app.get("/missing/<thing>")
def missing(thing: str) -> str:
    abort(404)


@api.get("/items/<uuid:item_id>")
def item(item_id: object) -> str:
    return str(item_id)


app.register_blueprint(api)

if os.environ.get("PERFTOP_TEST_WRAP") == "1":
    import perftop.wsgi

    app.wsgi_app = perftop.wsgi.Middleware(app.wsgi_app)  # type: ignore[method-assign]
