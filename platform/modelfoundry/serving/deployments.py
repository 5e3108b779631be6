"""Generic Serve deployments, the same for every model family:

- Stage: runs one group of a model's stages (the whole model when the group is all of them); for
  a language model it also runs generation steps, holding each request's KV cache for its blocks.
- Ingress: FastAPI (KServe v1 REST) front door. It validates every request, then either runs the
  model in-process (monolithic: no network hop) or calls its stage services in order through
  DeploymentHandles (split), fans out to several models and averages their probabilities
  (ensemble), or routes a family's verbs to its named services (the VAE's encoder and decoder).
  The verbs come from the family's FamilySpec; a language model's `generate` streams JSON lines.
"""

import asyncio
import hashlib
import logging
import random
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

import modelfoundry
from modelfoundry.data.text import CharTokenizer
from modelfoundry.models.transformer import Cache
from modelfoundry.serving import auth, guard, multiplex, oip, openapi, webpage
from modelfoundry.serving.batching import AdaptiveBatcher
from modelfoundry.serving.generation import CacheMiss, json_lines, line, local_step, parse_generate, tokens
from modelfoundry.serving.metrics import IngressMetrics, StageMetrics
from modelfoundry.serving.requests import (
    RequestError,
    instances_array,
    parse_json_body,
    png_array,
    png_grid,
    read_body,
)
from modelfoundry.serving.runner import ModelRunner, predictions, run_model, sigmoid, softmax
from modelfoundry.serving.spec import IngressSpec, check_traffic
from modelfoundry.store import StoreVersion

MAX_SAMPLES = 64

# generation requests whose KV cache one stage replica holds at once (least recently used go
# first; a request whose cache went is re-fed from its segment start, see generation.CacheMiss)
MAX_SESSIONS_PER_REPLICA = 64
# a reply (OIP v2) larger than this is encoded in a thread, off the replica's event loop
INLINE_REPLY_BYTES = 64 * 1024
RETRY_AFTER_S = 1  # what a 429 tells the client to wait
IMAGE_VERBS = ("predict", "encode", "reconstruct")  # verbs whose instances may come as one PNG

log = logging.getLogger("ray.serve")


def request_id() -> str:
    """Serve's id of the request being handled (HAProxy sets x-request-id), for logs and errors."""
    from ray.serve.context import _get_serve_request_context

    return _get_serve_request_context().request_id or "-"


class GenerationSlots:
    """At most `cap` generations at once on an ingress replica; beyond it a 429 with Retry-After.
    take() returns the slot's release, safe to call more than once."""

    def __init__(self, cap: int) -> None:
        self.cap, self.active = cap, 0

    def check(self) -> None:
        if self.active >= self.cap:
            raise RequestError(
                429,
                f"{self.cap} generations are in progress on this replica, its limit; retry in {RETRY_AFTER_S} s",
                {"retry-after": str(RETRY_AFTER_S)},
            )

    def take(self) -> Callable[[], None]:
        self.check()
        self.active += 1
        held = [True]

        def give_back() -> None:
            if held[0]:
                held[0] = False
                self.active -= 1

        return give_back


class Session:
    """One generation request's KV cache on a stage replica. Serve's multiplex LRU calls __del__
    when it evicts it (and Python may again at collection: harmless)."""

    def __init__(self) -> None:
        self.cache = Cache()
        self.evicted = False

    def __del__(self) -> None:
        self.evicted = True
        self.cache.reset()


def finite(out: np.ndarray) -> np.ndarray:
    """A model's output, refused with a 400 when it overflowed: inputs that are finite but far
    outside anything the model was trained on can drive it to inf or NaN, which JSON cannot carry."""
    if not np.isfinite(out).all():
        raise RequestError(
            400,
            "the model's output overflows (inf or NaN) for these inputs: their values are far outside the "
            "range it was trained on; check the input's scale",
        )
    return out


async def _call(handle, x: np.ndarray) -> np.ndarray:
    return await handle.remote(x)


async def run_model_batch(runner: ModelRunner, xs: list[np.ndarray]) -> list[np.ndarray]:
    if runner.inline(sum(len(x) for x in xs)):
        return runner.run_batch(xs)
    return await asyncio.to_thread(runner.run_batch, xs)


def batcher(runner: ModelRunner, batching: dict | None) -> AdaptiveBatcher | None:
    if not batching:
        return None
    return AdaptiveBatcher(
        lambda xs: run_model_batch(runner, xs), batching["max_batch_size"], batching["batch_wait_timeout_s"]
    )


def replica_transport(handle):
    """The handle, calling the way THIS replica's Serve settings say. A handle given to a
    deployment as an init argument keeps the transport chosen in the process that built the app,
    fixed when that process imported `ray.serve`: a driver that imported it before the platform's
    Serve settings were in its environment (`foundry serve`, any script that imports Serve before
    `connect()`, a client of a remote cluster) gave every stage hop Ray's actor-call path, ~2x the
    cost of the gRPC path the fast path sets (docs/results.md, issue 17). The replica's own
    setting is the cluster's."""
    from ray.serve._private.constants import RAY_SERVE_USE_GRPC_BY_DEFAULT

    return handle.options(_by_reference=not RAY_SERVE_USE_GRPC_BY_DEFAULT)


@serve.deployment
class Stage:
    """One group of a model's stages as a service: numpy in, numpy out."""

    def __init__(self, model_path: str, group: list[int] | None, batching: dict | None) -> None:
        self.runner = ModelRunner(model_path, group)
        self.sessions: dict[str, Session] = {}  # generation sessions this replica holds, by id
        self.batcher = batcher(self.runner, batching)
        where = StoreVersion.from_uri(model_path)
        self.metrics = StageMetrics(where.name, str(where.version), "-".join(map(str, self.runner.group)))

    async def __call__(self, x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        out = await self.batcher(x) if self.batcher else await run_model(self.runner, x)
        self.metrics.observe(time.perf_counter() - t0)
        return out

    # ---- language-model generation: the request's cache lives on this replica; Serve's
    # multiplexed routing (the session id as model id) sends the request's later steps here
    @serve.multiplexed(max_num_models_per_replica=MAX_SESSIONS_PER_REPLICA)
    async def _session(self, session_id: str) -> Session:
        for sid in [k for k, v in self.sessions.items() if v.evicted]:  # forget what the LRU dropped
            del self.sessions[sid]
        session = self.sessions[session_id] = Session()
        return session

    async def step(self, x: np.ndarray, start: int) -> np.ndarray | None:
        """Feed positions start.. of the request; None when this replica lacks its cache."""
        cache = (await self._session(serve.get_multiplexed_model_id())).cache
        if start and cache.start != start:
            return None
        return await asyncio.to_thread(self.runner.step, x, cache, start)

    async def end(self) -> None:
        """The request is over: free its cache. A session the LRU evicted (or that never reached
        this replica) is not loaded again just to be ended: that would evict a live one."""
        session = self.sessions.pop(serve.get_multiplexed_model_id(), None)
        if session is not None and not session.evicted:
            session.cache.reset()

    def session_ids(self) -> list[str]:
        """The sessions this replica holds a live cache for (tests, stats)."""
        return [k for k, v in self.sessions.items() if not v.evicted]


# the docs page and the schema are the Ingress's own routes below (behind its Host check and keys;
# Swagger UI's files served from the package, no CDN)
app = FastAPI(
    title="modelfoundry model service",
    description="KServe v1 / TF-Serving style REST API",
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


@app.exception_handler(RequestError)
async def _request_error(_: Request, err: RequestError) -> JSONResponse:
    return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)


@app.exception_handler(Exception)
async def _unexpected(_: Request, err: Exception) -> JSONResponse:
    # a bug, not a bad request: logged with its traceback and the request id; the client gets the
    # id to quote, never the exception's text
    rid = request_id()
    log.error("request %s failed", rid, exc_info=err)
    return JSONResponse({"error": f"internal error (request id {rid})"}, status_code=500)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, err: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, spec: IngressSpec, stages: list | None = None, members: list | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.task = spec.task
        self.input_shape = tuple(spec.input_spec["shape"])
        self.keys = auth.load_keys(spec.api_keys_env, spec.api_keys_file)
        self.allowed_hosts = spec.allowed_hosts
        self.stages = [replica_transport(s) for s in stages or []]
        self.members = [replica_transport(m) for m in members or []]
        self.local = ModelRunner(spec.model_path) if spec.kind == "model" and not spec.arms else None
        self.tokenizer = CharTokenizer.from_spec(spec.tokenizer) if spec.tokenizer else None
        self.generations = GenerationSlots(spec.limits.max_generations)  # in progress on this replica
        self.generated_tokens = 0  # tokens produced on this replica since it started
        self.batcher = batcher(self.local, spec.batching) if self.local else None
        self.metrics = IngressMetrics()
        # a canary: each version's model in this replica (one load per distinct version), and
        # the traffic split, set by reconfigure() from the deployment's user_config
        self.arms = {a.label: a for a in spec.arms}
        loaded: dict[str, tuple[ModelRunner, AdaptiveBatcher | None]] = {}
        for a in spec.arms:
            if a.path not in loaded:
                runner = ModelRunner(a.path)
                loaded[a.path] = (runner, batcher(runner, spec.batching))
        self.arm_models = {a.label: loaded[a.path] for a in spec.arms}
        self.traffic: list[tuple[str, int]] = [(a.label, 100 if i == 0 else 0) for i, a in enumerate(spec.arms)]

    def reconfigure(self, user_config: dict) -> None:
        """A canary's traffic weights ({"traffic": {label: percent}}), applied in place: Serve calls
        this on live replicas when only the user_config changed (serving/rollout.py)."""
        traffic = (user_config or {}).get("traffic")
        if traffic is None or not self.arms:
            return
        check_traffic(traffic, list(self.arms))
        self.traffic = [(label, int(traffic.get(label, 0))) for label in self.arms]

    def _pick(self, headers) -> str:
        """The arm for one request: by weight, at random, or by the hash of the sticky header's
        value (the same key always lands in the same arm while the weights stay)."""
        key = headers.get(self.spec.sticky_header) if self.spec.sticky_header else None
        if key:
            digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
            point = (int.from_bytes(digest, "big") % 10000) / 100
        else:
            point = random.uniform(0, 100)
        total = 0
        for label, weight in self.traffic:
            total += weight
            if point < total:
                return label
        return next(label for label, w in reversed(self.traffic) if w > 0)

    # ---- every route but the health probes starts here
    def _admit(self, request: Request, keyed: bool = True) -> None:
        """The Host check (serving/guard.py: DNS rebinding), then the API key when `keyed`."""
        guard.check_host(request.headers, self.allowed_hosts, bool(self.keys))
        if keyed:
            auth.check(self.keys, request.headers)

    # ---- routes
    @app.get("/", response_class=HTMLResponse)
    async def page(self, request: Request) -> HTMLResponse:
        """The demo page (serving/web/). It holds nothing secret: its API calls carry the key."""
        self._admit(request, keyed=False)
        return HTMLResponse(webpage.index(request.scope.get("root_path", "")))

    @app.get("/ui/{name}", include_in_schema=False)
    async def page_asset(self, name: str, request: Request) -> Response:
        self._admit(request, keyed=False)
        text, media_type = webpage.asset(name)
        return Response(text, media_type=media_type)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> JSONResponse:
        """The API of this app (serving/openapi.py): its model names, verbs and bodies."""
        self._admit(request)
        names = list(self.spec.members or []) if self.spec.kind == "multiplex" else [self.name]
        return JSONResponse(openapi.document(app.openapi(), self.spec, names))

    @app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        """Swagger UI, its files from the package (webpage.swagger_asset). With API keys the docs
        page is off: a page cannot send the key, and the schema is behind it."""
        self._docs_allowed(request)
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title=f"{self.name} - API",
            swagger_js_url=f"{root}/ui/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/ui/swagger/swagger-ui.css",
            swagger_favicon_url=f"{root}/ui/swagger/favicon-32x32.png",
        )

    @app.get("/ui/swagger/{name}", include_in_schema=False)
    async def swagger_asset(self, name: str, request: Request) -> Response:
        self._docs_allowed(request)
        data, media_type = webpage.swagger_asset(name)
        return Response(data, media_type=media_type)

    def _docs_allowed(self, request: Request) -> None:
        self._admit(request, keyed=False)
        if self.keys:
            raise RequestError(404, "the docs page is off on a service with API keys; GET /openapi.json with a key")

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "model": self.name}

    @app.get("/v1/models")
    async def list_models(self, request: Request) -> dict:
        self._admit(request)
        return {"models": [self.metadata()]}

    @app.get("/v1/models/{target}")
    async def get_model(self, target: str, request: Request) -> dict:
        self._admit(request)
        model_id = self._route(target, request.headers, require=False)
        return {**self.metadata(), **({"model_id": model_id} if model_id else {})}

    @app.post("/v1/models/{target}")
    async def post(self, target: str, request: Request) -> Response:
        return await self._measured(self._post(target, request, seen := {}), seen)

    async def _measured(self, call, seen: dict) -> Response:
        """Await one request's handler, counting it and its latency (serving/metrics.py) by model,
        version and verb as the handler recorded them in `seen`, and by status."""
        t0 = time.perf_counter()
        status = 500
        try:
            response = await call
            status = response.status_code
            if seen.get("version"):
                response.headers["x-model-version"] = seen["version"]
            return response
        except (RequestError, StarletteHTTPException) as err:
            status = getattr(err, "status", None) or getattr(err, "status_code", 500)
            raise
        finally:
            self.metrics.observe(
                seen.get("model", self.name),
                seen.get("version", self.spec.version),
                seen.get("verb", "unknown"),
                status,
                time.perf_counter() - t0,
            )

    async def _post(self, target: str, request: Request, seen: dict) -> Response:
        self._admit(request)
        name, _, verb = target.rpartition(":")
        verbs = list(self.spec.verbs)
        if not name:
            raise RequestError(404, f"use /v1/models/{self.name}:<verb>; verbs: {verbs}")
        model_id = self._route(name, request.headers)
        if model_id is not None:
            seen["model"] = model_id
        if verb not in verbs:
            raise RequestError(404, f"unknown verb {verb!r} for model {self.name}; allowed: {verbs}")
        seen["verb"] = verb
        arm = self._pick(request.headers) if self.arms else None
        if arm is not None:
            seen["version"] = self.arms[arm].version
        limits = self.spec.limits
        # what each verb documents: JSON; an image's instances also as PNG (checked before the body is read)
        images = verb in IMAGE_VERBS and len(self.input_shape) == 3 and self.input_shape[0] == 1
        accepted = (guard.JSON, guard.PNG) if images else (guard.JSON,)
        media = guard.check_content_type(request.headers, accepted, f":{verb}")
        if verb == "generate":
            self.generations.check()  # before the body is read; taken once it is valid
        body = await read_body(request, limits.max_body_bytes)
        if verb == "sample":
            return await self.sample(parse_json_body(body or b"{}", limits.max_body_bytes), request)
        if verb == "generate":
            return await self.generate(parse_json_body(body, limits.max_body_bytes))
        if media == guard.PNG:
            # decoding is CPU work: off the event loop, which keeps answering other requests
            x = await asyncio.to_thread(png_array, body, self.input_shape, limits.max_body_bytes)
        else:
            data = parse_json_body(body, limits.max_body_bytes)
            shape = (self.spec.config["latent_dim"],) if verb == "decode" else self.input_shape
            x = instances_array(data, shape, limits.max_instances)
        if model_id is not None:  # multiplexed: predict is its one verb
            return JSONResponse({**await self.verb_predict(x, model_id), "model_id": model_id})
        if arm is not None:  # a canary: predict is its one verb; the answer names its version
            out = predictions(self.task, await self.logits(x, None, arm))
            return JSONResponse({"predictions": out, "model_version": self.arms[arm].version, "arm": arm})
        return JSONResponse(await getattr(self, f"verb_{verb}")(x))

    # ---- Open Inference Protocol v2 (serving/oip.py), beside v1
    @app.get("/v2")
    async def v2_server(self, request: Request) -> dict:
        self._admit(request)
        return {"name": "modelfoundry", "version": modelfoundry.__version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def v2_live(self) -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready(self) -> dict:
        return {"ready": True}

    @app.get("/v2/models/{target}")
    @app.get("/v2/models/{target}/versions/{version}")
    async def v2_metadata(self, target: str, request: Request, version: str | None = None) -> dict:
        self._admit(request)
        model_id = self._check_v2(target, version, request.headers)
        s = self.spec
        return oip.metadata(model_id or self.name, s.version, self.task, list(self.input_shape), s.config)

    @app.get("/v2/models/{target}/ready")
    @app.get("/v2/models/{target}/versions/{version}/ready")
    async def v2_model_ready(self, target: str, request: Request, version: str | None = None) -> dict:
        self._admit(request)
        model_id = self._check_v2(target, version, request.headers)
        return {"name": model_id or self.name, "ready": True}

    @app.post("/v2/models/{target}/infer")
    @app.post("/v2/models/{target}/versions/{version}/infer")
    async def v2_infer(self, target: str, request: Request, version: str | None = None) -> Response:
        return await self._measured(self._v2_infer(target, request, version, seen := {"verb": "infer"}), seen)

    async def _v2_infer(self, target: str, request: Request, version: str | None, seen: dict) -> Response:
        self._admit(request)
        model_id = self._check_v2(target, version, request.headers)
        if model_id is not None:
            seen["model"] = model_id
        arm = self._pick(request.headers) if self.arms else None
        if arm is not None:
            seen["version"] = self.arms[arm].version
        verb = oip.TENSOR_VERB.get(self.task)
        if verb is None or verb not in self.spec.verbs:
            raise RequestError(
                400,
                f"model {self.name} is a {self.task} model with no tensor verb; use POST /v1/models/{self.name}:{self.spec.verbs[0]}",
            )
        limits = self.spec.limits
        # JSON, or binary tensors after a JSON header; or no Content-Type at all: tritonclient sends
        # none (text/plain and form types, what a cross-site simple POST uses, are refused)
        if guard.media_type(request.headers):
            guard.check_content_type(request.headers, (guard.JSON, guard.OCTET), "infer")
        body = await read_body(request, limits.max_body_bytes)
        specs = oip.output_specs(self.task, list(self.input_shape), self.spec.config)
        req = oip.parse_infer(
            body,
            request.headers,
            self.input_shape,
            limits.max_instances,
            limits.max_body_bytes,
            specs,
            limits.max_response_bytes,
        )
        out = await (self.reconstruction(req.x) if verb == "reconstruct" else self.logits(req.x, model_id, arm))
        answered = self.arms[arm].version if arm is not None else self.spec.version
        outs = oip.tensors(self.task, out)
        encode = (model_id or self.name, answered, req, outs)
        if req.reply_bytes <= INLINE_REPLY_BYTES:
            content, headers = oip.response(*encode)
        else:  # CPU work in proportion to the reply: off the event loop, which keeps answering
            content, headers = await asyncio.to_thread(oip.response, *encode)
        return Response(content, headers=headers, media_type=headers.pop("content-type"))

    def _check_v2(self, target: str, version: str | None, headers) -> str | None:
        model_id = self._route(target, headers)
        if model_id is not None and version not in (None, ""):
            raise RequestError(404, f"{model_id} is served at one version here; drop /versions/{version}")
        if model_id is None and version not in (None, "", self.spec.version):
            raise RequestError(
                404, f"model {self.name} has no version {version!r} here; it serves {self.spec.version!r}"
            )
        return model_id

    # ---- verbs
    async def verb_predict(self, x: np.ndarray, model_id: str | None = None) -> dict:
        return {"predictions": predictions(self.task, await self.logits(x, model_id))}

    async def logits(self, x: np.ndarray, model_id: str | None = None, arm: str | None = None) -> np.ndarray:
        """The model's output (an ensemble: the log of its members' mean probabilities; a
        multiplexed app: model_id's, from a replica of the models deployment that holds it; a
        canary: the arm's version's)."""
        if model_id is not None:
            return finite(await self.stages[0].options(multiplexed_model_id=model_id).remote(x))
        if self.members:
            outs = await asyncio.gather(*(_call(m, x) for m in self.members))  # fan out in parallel
            return np.log(np.mean([softmax(finite(o)) for o in outs], axis=0) + 1e-12)
        return finite(await self.forward(x, arm))

    async def verb_encode(self, x: np.ndarray) -> dict:
        stats = finite(await self.stages[0].remote(x))
        mu, logvar = np.split(stats, 2, axis=1)
        return {"predictions": [{"mu": m.tolist(), "logvar": lv.tolist()} for m, lv in zip(mu, logvar)]}

    async def verb_decode(self, z: np.ndarray) -> dict:
        return {"predictions": sigmoid(finite(await self.stages[1].remote(z))).tolist()}

    async def verb_reconstruct(self, x: np.ndarray) -> dict:
        return {"predictions": (await self.reconstruction(x)).tolist()}

    async def reconstruction(self, x: np.ndarray) -> np.ndarray:
        mu = np.split(finite(await self.stages[0].remote(x)), 2, axis=1)[0]  # the latent's mean (eval mode)
        return sigmoid(finite(await self.stages[1].remote(mu)))

    async def sample(self, data: dict, request: Request) -> Response:
        n = data.get("n", 8)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SAMPLES:
            raise RequestError(400, f"n must be an integer from 1 to {MAX_SAMPLES}, got {n!r}")
        seed = data.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise RequestError(400, f"seed must be a non-negative integer, got {seed!r}")
        z = np.random.default_rng(seed).standard_normal((n, self.spec.config["latent_dim"])).astype(np.float32)
        images = sigmoid(await self.stages[1].remote(z))
        if data.get("format") == "png" or "image/png" in request.headers.get("accept", ""):
            return Response(png_grid(images), media_type="image/png")
        return JSONResponse({"predictions": images.tolist()})

    async def generate(self, data: dict) -> Response:
        """Language models: new text for a prompt, streamed as JSON lines (one per token, then a
        summary line), or as one JSON object with "stream": false. Everything is checked before
        the first byte is sent; a failure after it ends the stream with an error line that names
        the request id only (the exception goes to the log)."""
        context = self.spec.config["context"]
        request = parse_generate(data, self.tokenizer, context, self.spec.limits.max_new_tokens)
        give_back = self.generations.take()
        step, release = local_step(self.local) if self.local else self._split_step()
        if not request.stream:
            try:
                ids = [t async for t in self._counted(tokens(step, request, context))]
            finally:
                give_back()
                release()
            return JSONResponse(self._summary(ids))
        stream = self._stream(step, release, request, request_id(), give_back)
        weakref.finalize(stream, give_back)  # a stream never started (client gone first) frees its slot too
        return StreamingResponse(stream, media_type="application/x-ndjson")

    async def _stream(self, step, release, request, rid: str, give_back: Callable[[], None]):
        # a client that disconnects cancels this generator at its next await (Serve cancels the
        # request): the finally block frees the request's caches and no more steps run
        try:
            token_ids = self._counted(tokens(step, request, self.spec.config["context"]))
            async for chunk in json_lines(token_ids, self.tokenizer, self._summary):
                yield chunk
        except Exception as err:  # headers are sent: the error goes in the stream, as JSON
            log.error("generation of request %s failed", rid, exc_info=err)
            yield line({"error": f"generation failed (request id {rid})"})
        finally:
            give_back()
            release()

    async def _counted(self, token_ids):
        """The tokens, counted as they are made (metadata's generated_tokens)."""
        async for t in token_ids:
            self.generated_tokens += 1
            yield t

    def _summary(self, ids: list[int]) -> dict:
        return {
            "done": True,
            "text": self.tokenizer.decode(ids),
            "tokens": len(ids),
            "finish_reason": "length",
            "model": self.name,
            "version": self.spec.version,
        }

    def _split_step(self):
        """Split: each stage service holds this request's cache for its blocks, found again by
        the session id (Serve's multiplexed routing); one hop per stage per token."""
        session = uuid.uuid4().hex
        calls = [s.options(method_name="step", multiplexed_model_id=session) for s in self.stages]

        async def step(ids: list[int], start: int) -> torch.Tensor:
            x = np.asarray([ids], dtype=np.int64)
            for call in calls:
                x = await call.remote(x, start)
                if x is None:
                    raise CacheMiss
            return torch.from_numpy(x[0])

        def release() -> None:
            for s in self.stages:
                s.options(method_name="end", multiplexed_model_id=session).remote()

        return step, release

    # ---- helpers
    async def forward(self, x: np.ndarray, arm: str | None = None) -> np.ndarray:
        if arm is not None:
            runner, arm_batcher = self.arm_models[arm]
            return await arm_batcher(x) if arm_batcher else await run_model(runner, x)
        if self.local is not None:
            return await self.batcher(x) if self.batcher else await run_model(self.local, x)
        for stage in self.stages:  # split: each hop is a call to another service
            x = await stage.remote(x)
        return x

    def _route(self, name: str, headers, require: bool = True) -> str | None:
        """Check the model a request names; for a multiplexed app, return the model id (from the
        URL, or from Serve's header when the URL names the app; None for the app itself when not
        `require`d), else None."""
        if self.spec.kind != "multiplex":
            if name != self.name:
                raise RequestError(404, f"unknown model {name!r}; this service serves {self.name!r}")
            return None
        models = self.spec.members or []
        header = headers.get(multiplex.HEADER)
        if name != self.name:
            if header and header != name:
                raise RequestError(400, f"the URL names model {name!r} and the {multiplex.HEADER} header {header!r}")
            header = name
        if not header and not require:
            return None
        if not header:
            raise RequestError(
                400, f"name a model: /v1/models/<model>:predict or the {multiplex.HEADER} header; models: {models}"
            )
        if header not in models:
            raise RequestError(404, f"unknown model {header[:100]!r}; this service serves {models}")
        return header

    def metadata(self) -> dict[str, Any]:
        s = self.spec
        out = {
            "name": self.name,
            "kind": s.kind,
            "family": s.family,
            "version": s.version,
            "task": self.task,
            "input_spec": s.input_spec,
            "dataset": s.dataset,
            "metrics": s.metrics,
            "split": s.groups,
            "members": s.members,
            "verbs": list(s.verbs),
        }
        if self.arms:  # a canary: this replica's weights now
            out["traffic"] = {label: {"version": self.arms[label].version, "weight": w} for label, w in self.traffic}
            out["sticky_header"] = s.sticky_header
        if "decode" in s.verbs:
            out["latent_dim"] = s.config["latent_dim"]
        if "generate" in s.verbs:
            out["generate"] = {
                "context": s.config["context"],
                "max_new_tokens": s.limits.max_new_tokens,
                "vocabulary": self.tokenizer.vocab if self.tokenizer else None,
                "active": self.generations.active,
                "max_generations": self.generations.cap,
                "generated_tokens": self.generated_tokens,
            }
        return out
