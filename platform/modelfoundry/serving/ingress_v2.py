"""The Open Inference Protocol v2 routes of the ingress (serving/oip.py parses and encodes),
beside its KServe v1 routes: server and model metadata, readiness, and infer (JSON or binary
tensors). A mixin of Ingress: it reads the ingress's spec, backend and admission."""

import asyncio

from fastapi import Request
from fastapi.responses import Response

import modelfoundry
from modelfoundry.serving import guard, oip
from modelfoundry.serving.http_app import app
from modelfoundry.serving.requests import RequestError, read_body

# a reply larger than this is encoded in a thread, off the replica's event loop
INLINE_REPLY_BYTES = 64 * 1024


class OipV2Routes:
    """Needs from its class: spec, name, task, output, tensor_verb, input_shape, backend,
    _admit(request), _measured(call, seen) and the reconstruction verb."""

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
        return oip.metadata(model_id or self.name, s.version, self.output, list(self.input_shape), s.config)

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
        arm = self.backend.pick(request.headers)
        if arm is not None:
            seen["version"] = self.backend.version(arm)
        verb = self.tensor_verb
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
        specs = oip.output_specs(self.output, list(self.input_shape), self.spec.config)
        req = oip.parse_infer(
            body,
            request.headers,
            self.input_shape,
            limits.max_instances,
            limits.max_body_bytes,
            specs,
            limits.max_response_bytes,
        )
        out = await (self.reconstruction(req.x) if verb == "reconstruct" else self.backend.output(req.x, model_id, arm))
        answered = self.backend.version(arm)
        outs = oip.tensors(self.output, out)
        encode = (model_id or self.name, answered, req, outs)
        if req.reply_bytes <= INLINE_REPLY_BYTES:
            content, headers = oip.response(*encode)
        else:  # CPU work in proportion to the reply: off the event loop, which keeps answering
            content, headers = await asyncio.to_thread(oip.response, *encode)
        return Response(content, headers=headers, media_type=headers.pop("content-type"))

    def _check_v2(self, target: str, version: str | None, headers) -> str | None:
        model_id = self.backend.route(target, headers)
        if model_id is not None and version not in (None, ""):
            raise RequestError(404, f"{model_id} is served at one version here; drop /versions/{version}")
        if model_id is None and version not in (None, "", self.spec.version):
            raise RequestError(
                404, f"model {self.name} has no version {version!r} here; it serves {self.spec.version!r}"
            )
        return model_id
