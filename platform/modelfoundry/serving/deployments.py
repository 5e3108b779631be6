"""Generic Serve deployments, the same for every model family:

- Stage: runs one group of a model's stages (the whole model when the group is all of them).
- Ingress: FastAPI (KServe v1 REST) front door. It validates every request, then either runs the
  model in-process (monolithic: no network hop) or calls its stage services in order through
  DeploymentHandles (split), fans out to several models and averages their probabilities
  (ensemble), or routes the VAE verbs to its encoder and decoder services.
"""

import asyncio
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelfoundry.serving import auth
from modelfoundry.serving.requests import (
    RequestError,
    instances_array,
    parse_json_body,
    png_array,
    png_grid,
    read_body,
)
from modelfoundry.serving.runner import ModelRunner, predictions, sigmoid, softmax

VERBS = {
    "classification": ["predict"],
    "regression": ["predict"],
    "generative": ["encode", "decode", "reconstruct", "sample"],
}
MAX_SAMPLES = 64


async def _call(handle, x: np.ndarray) -> np.ndarray:
    return await handle.remote(x)


@serve.deployment
class Stage:
    """One group of a model's stages as a service: numpy in, numpy out."""

    def __init__(self, model_path: str, group: list[int] | None, batching: dict | None) -> None:
        self.runner = ModelRunner(model_path, group)
        self.batching = batching
        if batching:
            self._batched.set_max_batch_size(batching["max_batch_size"])
            self._batched.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _batched(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        return await asyncio.to_thread(self.runner.run_batch, xs)

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        # the model runs in a thread: the replica's event loop (which its metrics pusher and
        # health checks share) stays free even when the replica is saturated
        return await self._batched(x) if self.batching else await asyncio.to_thread(self.runner.run, x)


app = FastAPI(title="modelfoundry model service", description="KServe v1 / TF-Serving style REST API")


@app.exception_handler(RequestError)
async def _request_error(_: Request, err: RequestError) -> JSONResponse:
    return JSONResponse({"error": err.message}, status_code=err.status)


@app.exception_handler(Exception)
async def _unexpected(_: Request, err: Exception) -> JSONResponse:
    # a bug, not a bad request: logged by Serve with its traceback; the client gets JSON, not text
    return JSONResponse({"error": f"internal error ({type(err).__name__})"}, status_code=500)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, spec: dict[str, Any], stages: list | None = None, members: list | None = None) -> None:
        """spec: name, kind (model|ensemble|vae), meta (model.json), groups, limits, batching, model_path."""
        self.spec = spec
        self.name: str = spec["name"]
        self.meta: dict[str, Any] = spec["meta"]
        self.task: str = spec["task"]
        self.input_shape = tuple(self.meta["input_spec"]["shape"])
        self.keys = auth.load_keys(spec.get("api_keys_env"), spec.get("api_keys_file"))
        self.stages = stages or []
        self.members = members or []
        self.local = ModelRunner(spec["model_path"]) if spec["kind"] == "model" and not self.stages else None
        if self.local and spec.get("batching"):
            self._batched.set_max_batch_size(spec["batching"]["max_batch_size"])
            self._batched.set_batch_wait_timeout_s(spec["batching"]["batch_wait_timeout_s"])

    # ---- routes
    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model": self.name}

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> dict:
        auth.check(self.keys, request.headers)
        return {"models": [self.metadata()]}

    @app.get("/v1/models/{target}")
    async def get_model(self, target: str, request: Request) -> dict:
        auth.check(self.keys, request.headers)
        self._check_name(target)
        return self.metadata()

    @app.post("/v1/models/{target}")
    async def post(self, target: str, request: Request) -> Response:
        auth.check(self.keys, request.headers)
        name, _, verb = target.rpartition(":")
        if not name:
            raise RequestError(404, f"use /v1/models/{self.name}:<verb>; verbs: {VERBS[self.task]}")
        self._check_name(name)
        if verb not in VERBS[self.task]:
            raise RequestError(404, f"unknown verb {verb!r} for model {self.name}; allowed: {VERBS[self.task]}")
        limits = self.spec["limits"]
        body = await read_body(request, limits["max_body_bytes"])
        if verb == "sample":
            return await self.sample(parse_json_body(body or b"{}", limits["max_body_bytes"]), request)
        if request.headers.get("content-type", "").startswith("image/png"):
            # decoding is CPU work: off the event loop, which keeps answering other requests
            x = await asyncio.to_thread(png_array, body, self.input_shape, limits["max_body_bytes"])
        else:
            data = parse_json_body(body, limits["max_body_bytes"])
            shape = (self.meta["config"]["latent_dim"],) if verb == "decode" else self.input_shape
            x = instances_array(data, shape, limits["max_instances"])
        return JSONResponse(await getattr(self, f"verb_{verb}")(x))

    # ---- verbs
    async def verb_predict(self, x: np.ndarray) -> dict:
        if self.members:
            outs = await asyncio.gather(*(_call(m, x) for m in self.members))  # fan out in parallel
            probs = np.mean([softmax(o) for o in outs], axis=0)
            return {"predictions": predictions("classification", np.log(probs + 1e-12))}
        return {"predictions": predictions(self.task, await self.forward(x))}

    async def verb_encode(self, x: np.ndarray) -> dict:
        stats = await self.stages[0].remote(x)
        mu, logvar = np.split(stats, 2, axis=1)
        return {"predictions": [{"mu": m.tolist(), "logvar": lv.tolist()} for m, lv in zip(mu, logvar)]}

    async def verb_decode(self, z: np.ndarray) -> dict:
        return {"predictions": sigmoid(await self.stages[1].remote(z)).tolist()}

    async def verb_reconstruct(self, x: np.ndarray) -> dict:
        mu = np.split(await self.stages[0].remote(x), 2, axis=1)[0]  # the latent's mean (eval mode)
        return {"predictions": sigmoid(await self.stages[1].remote(mu)).tolist()}

    async def sample(self, data: dict, request: Request) -> Response:
        n = data.get("n", 8)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SAMPLES:
            raise RequestError(400, f"n must be an integer from 1 to {MAX_SAMPLES}, got {n!r}")
        seed = data.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise RequestError(400, f"seed must be a non-negative integer, got {seed!r}")
        z = np.random.default_rng(seed).standard_normal((n, self.meta["config"]["latent_dim"])).astype(np.float32)
        images = sigmoid(await self.stages[1].remote(z))
        if data.get("format") == "png" or "image/png" in request.headers.get("accept", ""):
            return Response(png_grid(images), media_type="image/png")
        return JSONResponse({"predictions": images.tolist()})

    # ---- helpers
    async def forward(self, x: np.ndarray) -> np.ndarray:
        if self.local is not None:
            # in a thread: model work on the event loop starved the replica's autoscaling metrics
            # pusher under sustained load (a saturated replica reported no load and never scaled)
            return await self._batched(x) if self.spec.get("batching") else await asyncio.to_thread(self.local.run, x)
        for stage in self.stages:  # split: each hop is a call to another service
            x = await stage.remote(x)
        return x

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _batched(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        return await asyncio.to_thread(self.local.run_batch, xs)

    def _check_name(self, name: str) -> None:
        if name != self.name:
            raise RequestError(404, f"unknown model {name!r}; this service serves {self.name!r}")

    def metadata(self) -> dict[str, Any]:
        m = self.meta
        return {
            "name": self.name,
            "kind": self.spec["kind"],
            "family": m.get("family"),
            "version": self.spec.get("version"),
            "task": self.task,
            "input_spec": m["input_spec"],
            "dataset": m.get("dataset", {}).get("name"),
            "metrics": {k: v for k, v in m.get("metrics", {}).items() if k.startswith("test_")},
            "split": self.spec.get("groups"),
            "members": self.spec.get("members"),
            "verbs": VERBS[self.task],
        }
