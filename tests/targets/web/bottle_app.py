"""A plain Bottle app that knows nothing of perftop (served by gunicorn)."""

import bottle

app = bottle.Bottle()


@app.get("/user/<username>")
def user(username: str) -> str:
    return f"hello {username}"


@app.get("/orders/<order_id:int>")
def order(order_id: int) -> str:
    return str(order_id)


@app.get("/boom")
def boom() -> str:
    raise RuntimeError("boom")
