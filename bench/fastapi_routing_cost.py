"""What FastAPI's routing costs per request, in process (no network, no model), side by side:
the ingress's route shape (`POST /v1/models/{target}` among the metadata and health routes,
`await request.body()`, a JSONResponse) vs a bare ASGI callable doing the same.

    python bench/fastapi_routing_cost.py [--requests 20000]

It bounds what replacing FastAPI routing on the `:predict` path could save in a Serve replica.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from machine import finish, quiet_start  # bench/machine.py (the script's folder is on sys.path)

BODY = json.dumps({"instances": [[0.0] * 64]}).encode()
OUT = {"predictions": [{"class": 1}]}

app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@app.get("/v1/models/{target}")
async def metadata(target: str, request: Request) -> dict:
    return {"name": target}


@app.post("/v1/models/{target}")
async def post(target: str, request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse(OUT)


async def bare(scope, receive, send) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    out = json.dumps(OUT).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": out})


async def drive(asgi, n: int) -> float:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/models/m:predict",
        "raw_path": b"/v1/models/m:predict",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 8000),
    }

    async def receive() -> dict:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict) -> None:
        pass

    t0 = time.perf_counter()
    for _ in range(n):
        await asgi(dict(scope), receive, send)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    args = ap.parse_args()
    start = quiet_start()
    rows = {"fastapi": [], "bare asgi": []}
    for _ in range(2):  # interleaved, twice
        rows["fastapi"].append(asyncio.run(drive(app, args.requests)))
        rows["bare asgi"].append(asyncio.run(drive(bare, args.requests)))
    for name, us in rows.items():
        print(f"{name:10} {min(us):7.1f} us/request (best of 2 x {args.requests})")
    finish(start)


if __name__ == "__main__":
    main()
