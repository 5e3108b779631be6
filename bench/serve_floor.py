"""Ray Serve's own floor for one DeploymentHandle hop, for bench/serve_load.py to compare the
platform's split app with: two trivial apps on the same cluster and settings, the same FastAPI
route shape and JSON body, no model.

  floor-0: ingress parses the body into a float32 array and answers
  floor-1: the same, plus one hop: the array goes to a second deployment that returns it

floor-1 minus floor-0 at c1 is what one hop costs in Ray Serve itself, on this machine, now.
(No `from __future__ import annotations` here: FastAPI must see `Request` as a class.)
"""

import numpy as np
from fastapi import FastAPI, Request
from ray import serve

from modelfoundry.serving.options import DeploymentOptions
from modelfoundry.serving.stage import replica_transport

app = FastAPI()
OPTIONS = DeploymentOptions().serve_options()  # the platform's defaults: 64 ongoing, 0.25 CPU


@serve.deployment(**OPTIONS)
class Echo:
    async def __call__(self, x: np.ndarray) -> np.ndarray:
        return x


@serve.deployment(**OPTIONS)
@serve.ingress(app)
class Front:
    def __init__(self, echo=None) -> None:
        self.echo = replica_transport(echo) if echo is not None else None

    @app.post("/v1/models/{target}")
    async def post(self, target: str, request: Request) -> dict:
        x = np.asarray((await request.json())["instances"], dtype=np.float32)
        if self.echo is not None:
            x = await self.echo.remote(x)
        return {"n": int(x.shape[0])}


def floor_apps() -> dict:
    return {"floor-0": Front.bind(), "floor-1": Front.bind(Echo.bind())}
