"""A plain FastAPI app that knows nothing of perftop (served by uvicorn and gunicorn's UvicornWorker)."""

from fastapi import FastAPI, HTTPException

app = FastAPI()


@app.get("/user/{username}")
async def user(username: str) -> dict[str, str]:
    return {"hello": username}


@app.get("/orders/{order_id}")
def order(order_id: int) -> dict[str, int]:
    return {"order": order_id}


@app.get("/boom")
async def boom() -> None:
    raise RuntimeError("boom")


@app.get("/missing/{thing}")
async def missing(thing: str) -> None:
    raise HTTPException(status_code=404)
