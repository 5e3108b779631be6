"""The Open Inference Protocol v2 routes of the ingress (serving/oip.py parses and encodes),
beside its KServe v1 routes: server and model metadata, readiness, and infer (JSON or binary
tensors). Functions of the Ingress (`ing`: its spec, backend and output), whose routes call them
after admitting the request (Ray Serve binds only the routes declared on the ingress class)."""

import asyncio

from fastapi import Request
from fastapi.responses import Response

import modelfoundry
from modelfoundry.serving import guard, oip
from modelfoundry.serving.requests import RequestError, read_body

# a reply larger than this is encoded in a thread, off the replica's event loop
INLINE_REPLY_BYTES = 64 * 1024


async def infer(ing, target: str, request: Request, version: str | None, seen: dict) -> Response:
    """POST /v2/models/<target>[/versions/<version>]/infer: JSON or binary tensors in and out."""
    ing._admit(request)
    model_id = check_target(ing, target, version, request.headers)
    if model_id is not None:
        seen["model"] = model_id
    arm = ing.backend.pick(request.headers)
    if arm is not None:
        seen["version"] = ing.backend.version(arm)
    verb = ing.tensor_verb
    if verb is None or verb not in ing.spec.verbs:
        raise RequestError(
            400,
            f"model {ing.name} is a {ing.task} model with no tensor verb; use POST /v1/models/{ing.name}:{ing.spec.verbs[0]}",
        )
    limits = ing.spec.limits
    # JSON, or binary tensors after a JSON header; or no Content-Type at all: tritonclient sends
    # none (text/plain and form types, what a cross-site simple POST uses, are refused)
    if guard.media_type(request.headers):
        guard.check_content_type(request.headers, (guard.JSON, guard.OCTET), "infer")
    body = await read_body(request, limits.max_body_bytes)
    specs = oip.output_specs(ing.output, list(ing.input_shape), ing.spec.config)
    req = oip.parse_infer(
        body,
        request.headers,
        ing.input_shape,
        limits.max_instances,
        limits.max_body_bytes,
        specs,
        limits.max_response_bytes,
    )
    out = await (ing.reconstruction(req.x) if verb == "reconstruct" else ing.backend.output(req.x, model_id, arm))
    answered = ing.backend.version(arm)
    outs = oip.tensors(ing.output, out)
    encode = (model_id or ing.name, answered, req, outs)
    if req.reply_bytes <= INLINE_REPLY_BYTES:
        content, headers = oip.response(*encode)
    else:  # CPU work in proportion to the reply: off the event loop, which keeps answering
        content, headers = await asyncio.to_thread(oip.response, *encode)
    return Response(content, headers=headers, media_type=headers.pop("content-type"))


def check_target(ing, target: str, version: str | None, headers) -> str | None:
    """The model id a v2 path names (multiplexed apps), its version checked against the served one."""
    model_id = ing.backend.route(target, headers)
    if model_id is not None and version not in (None, ""):
        raise RequestError(404, f"{model_id} is served at one version here; drop /versions/{version}")
    if model_id is None and version not in (None, "", ing.spec.version):
        raise RequestError(404, f"model {ing.name} has no version {version!r} here; it serves {ing.spec.version!r}")
    return model_id


def server() -> dict:
    return {"name": "modelfoundry", "version": modelfoundry.__version__, "extensions": ["binary_tensor_data"]}


def metadata(ing, target: str, version: str | None, headers) -> dict:
    model_id = check_target(ing, target, version, headers)
    s = ing.spec
    return oip.metadata(model_id or ing.name, s.version, ing.output, list(ing.input_shape), s.config)


def model_ready(ing, target: str, version: str | None, headers) -> dict:
    return {"name": check_target(ing, target, version, headers) or ing.name, "ready": True}
