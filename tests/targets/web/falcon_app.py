"""A plain Falcon (WSGI) app that knows nothing of perftop (served by gunicorn)."""

import falcon


class User:
    def on_get(self, req: falcon.Request, resp: falcon.Response, username: str) -> None:
        resp.text = f"hello {username}"


class Order:
    def on_get(self, req: falcon.Request, resp: falcon.Response, order_id: int) -> None:
        resp.text = str(order_id)


app = falcon.App()
app.add_route("/user/{username}", User())
app.add_route("/orders/{order_id:int}", Order())
