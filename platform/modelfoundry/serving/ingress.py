"""The one ingress of every app: FastAPI routes (KServe v1 REST, the web page, the OpenAPI
document and Swagger UI; Open Inference Protocol v2, its work in serving/ingress_v2.py), the Host check
and API keys, body and reply limits, metrics. What runs the model is the app shape's Backend (serving/backends/): monolithic
in this replica, stage services in order, a family's named services, an ensemble, a multiplexed
app or a canary. The verbs come from the family's FamilySpec; a language model's `generate`
streams JSON lines.
"""

import asyncio
import time
from typing import Any

from fastapi import Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelfoundry.data.text import CharTokenizer
from modelfoundry.serving import auth, guard, ingress_v2, openai_api, openai_reply, openapi, webpage
from modelfoundry.serving.backends import BACKENDS
from modelfoundry.serving.continuous import Engine, Limits
from modelfoundry.serving.explain import parse_explain
from modelfoundry.serving.http_app import app
from modelfoundry.serving.metrics import IngressMetrics
from modelfoundry.serving.requests import (
    RequestError,
    instances_array,
    parse_json_body,
    png_array,
    read_body,
)
from modelfoundry.serving.runner import predictions
from modelfoundry.serving.slo import Window
from modelfoundry.serving.spec import IngressSpec
from modelfoundry.serving.verbs import Verbs
from modelfoundry.tasks import task_spec

IMAGE_VERBS = ("predict", "explain", "encode", "reconstruct")  # verbs whose instances may come as one PNG


@serve.deployment
@serve.ingress(app)
class Ingress(Verbs):
    def __init__(self, spec: IngressSpec, handles: list | None = None) -> None:
        self.spec = spec
        self.name, self.task = spec.name, spec.task
        # what the predict and infer verbs answer, and the verb an OIP v2 infer runs (None: none)
        self.output, self.tensor_verb = task_spec(spec.task).output, task_spec(spec.task).tensor_verb
        self.input_shape = spec.input_spec.shape
        self.keys = auth.load_keys(spec.api_keys_env, spec.api_keys_file)
        self.allowed_hosts = spec.allowed_hosts
        self.backend = BACKENDS[spec.kind](spec, handles or [])
        self.tokenizer = CharTokenizer.from_spec(spec.tokenizer) if spec.tokenizer else None
        self.engine = self._engine() if "generate" in spec.verbs else None  # continuous batching
        self.generated_tokens = 0  # tokens produced on this replica since it started
        self.metrics = IngressMetrics()
        self.window = Window()  # arrivals and latencies for the latency-objective planner
        self.started = int(time.time())

    def _engine(self) -> Engine:
        lim, context = self.spec.limits, self.spec.config["context"]
        kv = lim.max_kv_tokens or lim.max_generations * context
        return Engine(self.backend.decoders(), Limits(context, lim.max_generations, kv, lim.max_queued_generations))

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics (read by the planner, serving/slo_policy.py)."""
        return {**self.window.stats(), **self.backend.autoscaling_stats()}

    def reconfigure(self, user_config: dict) -> None:
        """The deployment's user_config changed (a canary's traffic weights, applied in place:
        Serve calls this on live replicas, serving/rollout.py)."""
        self.backend.reconfigure(user_config)

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
        return JSONResponse(openapi.document(app.openapi(), self.spec, self.backend.names()))

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
        """KServe's `models`, and for a language model OpenAI's `object` and `data` beside it."""
        self._admit(request)
        extra = openai_api.models_list(self.name, self.started) if self.engine else {}
        return {"models": [self.metadata()], **extra}

    # ---- the OpenAI-compatible API of a language model (serving/openai_api.py)
    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._measured(self._openai(request, False, seen := {"verb": "completions"}), seen)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._measured(self._openai(request, True, seen := {"verb": "chat.completions"}), seen)

    async def _openai(self, request: Request, chat: bool, seen: dict) -> Response:
        self._admit(request)
        if self.engine is None:
            raise openai_api.fail(404, f"{self.name} is not a language model", "model", "model_not_found")
        guard.check_content_type(request.headers, (guard.JSON,), request.url.path)
        self.engine.check()  # before the body is read (429 when rows and queue are full)
        data = parse_json_body(
            await read_body(request, self.spec.limits.max_body_bytes), self.spec.limits.max_body_bytes
        )
        context, limit = self.spec.config["context"], self.spec.limits.max_new_tokens
        completion = openai_api.parse(data, chat, self.name, self.tokenizer, context, limit)
        return await openai_reply.answer(self, completion)

    @app.get("/v1/models/{target}")
    async def get_model(self, target: str, request: Request) -> dict:
        self._admit(request)
        model_id = self.backend.route(target, request.headers, require=False)
        return {**self.metadata(), **({"model_id": model_id} if model_id else {})}

    @app.post("/v1/models/{target}")
    async def post(self, target: str, request: Request) -> Response:
        return await self._measured(self._post(target, request, seen := {}), seen)

    async def _measured(self, call, seen: dict) -> Response:
        """Await one request's handler, counting it and its latency (serving/metrics.py) by model,
        version and verb as the handler recorded them in `seen`, and by status."""
        t0 = time.perf_counter()
        status = 500
        self.window.arrive()
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
            took = time.perf_counter() - t0
            self.window.add(took)
            self.metrics.observe(
                seen.get("model", self.name),
                seen.get("version", self.spec.version),
                seen.get("verb", "unknown"),
                status,
                took,
            )

    async def _post(self, target: str, request: Request, seen: dict) -> Response:
        self._admit(request)
        name, _, verb = target.rpartition(":")
        verbs = list(self.spec.verbs)
        if not name:
            raise RequestError(404, f"use /v1/models/{self.name}:<verb>; verbs: {verbs}")
        model_id = self.backend.route(name, request.headers)
        if model_id is not None:
            seen["model"] = model_id
        if verb not in verbs:
            raise RequestError(404, f"unknown verb {verb!r} for model {self.name}; allowed: {verbs}")
        seen["verb"] = verb
        target = self.backend.pick(request.headers)
        if target is not None:
            seen["version"] = self.backend.version(target)
        limits = self.spec.limits
        # what each verb documents: JSON; an image's instances also as PNG (checked before the body is read)
        images = verb in IMAGE_VERBS and len(self.input_shape) == 3 and self.input_shape[0] == 1
        accepted = (guard.JSON, guard.PNG) if images else (guard.JSON,)
        media = guard.check_content_type(request.headers, accepted, f":{verb}")
        if verb == "generate":
            self.engine.check()  # before the body is read (429 when rows and queue are full)
        body = await read_body(request, limits.max_body_bytes)
        if verb == "sample":
            return await self.sample(parse_json_body(body or b"{}", limits.max_body_bytes), request)
        if verb == "generate":
            return await self.generate(parse_json_body(body, limits.max_body_bytes))
        if media == guard.PNG:
            # decoding is CPU work: off the event loop, which keeps answering other requests
            x = await asyncio.to_thread(png_array, body, self.input_shape, limits.max_body_bytes)
        if verb == "explain":  # a PNG: one instance, explained with the defaults
            data = {"instances": x.tolist()} if media == guard.PNG else parse_json_body(body, limits.max_body_bytes)
            req = parse_explain(data, self.input_shape, limits.max_instances)
            return JSONResponse(await self.backend.explain(req, self.output == "classes"))
        if media != guard.PNG:
            data = parse_json_body(body, limits.max_body_bytes)
            shape = (self.spec.config["latent_dim"],) if verb == "decode" else self.input_shape
            x = instances_array(data, shape, limits.max_instances)
        if verb == "predict":  # the answer names the model or version that gave it, where the app has several
            out = predictions(self.output, await self.backend.output(x, model_id, target))
            return JSONResponse({"predictions": out, **self.backend.reply_fields(model_id, target)})
        return JSONResponse(await getattr(self, f"verb_{verb}")(x))

    # ---- Open Inference Protocol v2 (serving/ingress_v2.py, serving/oip.py), beside v1
    @app.get("/v2")
    async def v2_server(self, request: Request) -> dict:
        self._admit(request)
        return ingress_v2.server()

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
        return ingress_v2.metadata(self, target, version, request.headers)

    @app.get("/v2/models/{target}/ready")
    @app.get("/v2/models/{target}/versions/{version}/ready")
    async def v2_model_ready(self, target: str, request: Request, version: str | None = None) -> dict:
        self._admit(request)
        return ingress_v2.model_ready(self, target, version, request.headers)

    @app.post("/v2/models/{target}/infer")
    @app.post("/v2/models/{target}/versions/{version}/infer")
    async def v2_infer(self, target: str, request: Request, version: str | None = None) -> Response:
        seen = {"verb": "infer"}
        return await self._measured(ingress_v2.infer(self, target, request, version, seen), seen)

    def metadata(self) -> dict[str, Any]:
        s = self.spec
        out = {
            "name": self.name,
            "kind": s.kind,
            "family": s.family,
            "version": s.version,
            "task": self.task,
            "input_spec": s.input_spec.model_dump(mode="json"),
            "dataset": s.dataset,
            "metrics": s.metrics,
            "split": s.groups,
            "members": s.members,
            "verbs": list(s.verbs),
        }
        out.update(self.backend.describe())  # a canary: this replica's weights now
        if "decode" in s.verbs:
            out["latent_dim"] = s.config["latent_dim"]
        if "generate" in s.verbs:
            out["generate"] = {
                "context": s.config["context"],
                "max_new_tokens": s.limits.max_new_tokens,
                "vocabulary": self.tokenizer.vocab if self.tokenizer else None,
                "active": self.engine.active,  # running + queued on this replica
                **self.engine.stats(),
                "max_generations": s.limits.max_generations,
                "max_kv_tokens": self.engine.limits.kv_tokens,
                "max_queued_generations": s.limits.max_queued_generations,
                "generated_tokens": self.generated_tokens,
            }
        return out
