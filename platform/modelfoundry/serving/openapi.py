"""The OpenAPI document an ingress replica serves at /openapi.json: FastAPI's (the routes) with what
the routes read by hand described too, for this app: the model names and verbs the paths take,
each verb's request body (JSON, a PNG for image models, OIP v2's infer request) and every error
status with its `{"error": ...}` body. Clients, docs and API fuzzers (Schemathesis in the tests)
read it; nothing in it is a secret (it is behind the app's keys when it has some)."""

from __future__ import annotations

import copy
from typing import Any

from modelfoundry.serving.explain import MAX_STEPS

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
ERRORS = {
    "400": "the request is malformed (names what is wrong)",
    "401": "an API key is required",
    "403": "the API key is not accepted",
    "404": "no such model, version or verb",
    "405": "the method is not allowed here",
    "413": "the body, the instances or the reply is over this app's limit",
    "415": "the verb does not take this Content-Type",
    "421": "the Host header is not a name this service answers",
    "429": "the replica is at its generation limit; retry after Retry-After seconds",
    "500": "a bug (the body names the request id to report)",
}
DATATYPES = ["UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]
TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape", "data"],
    "properties": {
        "name": {"type": "string", "enum": ["input"]},
        "datatype": {"type": "string", "enum": DATATYPES},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2},
        "data": {"type": "array", "items": {"type": "number"}, "minItems": 1},
        "parameters": {"type": "object"},
    },
}
V2_BODY = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string", "maxLength": 256},
        "inputs": {"type": "array", "items": TENSOR, "minItems": 1, "maxItems": 1},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
        "parameters": {"type": "object"},
    },
}
FLOAT32_MAX = 3.4e38
MAX_SAMPLES = 64  # verbs.MAX_SAMPLES (the VAE's sample verb)


def _instances(shape: list[int], max_instances: int) -> dict[str, Any]:
    """{"instances": [...]}: 1 to max_instances inputs, each `shape` values flat (row-major)."""
    size = 1
    for d in shape:
        size *= d
    number = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
    one = {"type": "array", "items": number, "minItems": size, "maxItems": size}
    return {
        "type": "object",
        "required": ["instances"],
        "properties": {"instances": {"type": "array", "items": one, "minItems": 1, "maxItems": max_instances}},
    }


def _explain(shape: list[int], max_instances: int) -> dict[str, Any]:
    """:explain's body (serving/explain.py): instances x steps rows at most max_instances."""
    body = _instances(shape, max_instances)
    one = body["properties"]["instances"]["items"]
    body["additionalProperties"] = False
    body["properties"].update(
        {
            "target": {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "array", "items": {"type": "integer"}}]},
            "baseline": {"oneOf": [{"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}, one]},
            "steps": {"type": "integer", "minimum": 1, "maximum": MAX_STEPS},
        }
    )
    return body


def _generate(vocab: str, context: int, max_new_tokens: int) -> dict[str, Any]:
    chars = "".join(f"\\u{ord(c):04x}" for c in vocab)
    return {
        "type": "object",
        "required": ["prompt"],
        "additionalProperties": False,
        "properties": {
            "prompt": {"type": "string", "pattern": f"^[{chars}]{{1,{context}}}$"},
            "max_new_tokens": {"type": "integer", "minimum": 1, "maximum": max_new_tokens},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_k": {"type": "integer", "minimum": 1, "maximum": len(vocab)},
            "seed": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
            "stream": {"type": "boolean"},
        },
    }


OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _openai_body(spec: Any, chat: bool) -> dict[str, Any]:
    """A completions or chat request (serving/openai_api.py) for this language model."""
    from modelfoundry.serving.openai_api import MAX_N, MAX_STOP, ROLES

    prompt = _generate((spec.tokenizer or {}).get("vocab", ""), spec.config.get("context", 1), 1)["properties"][
        "prompt"
    ]
    message = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {"role": {"type": "string", "enum": sorted(ROLES)}, "content": {"type": "string"}},
    }
    text = {"messages": {"type": "array", "items": message, "minItems": 1}} if chat else {"prompt": prompt}
    stop = {"type": "string", "minLength": 1}
    return {
        "type": "object",
        "required": ["model", "messages" if chat else "prompt"],
        "properties": {
            "model": {"type": "string", "enum": [spec.name]},
            **text,
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": spec.limits.max_new_tokens},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
            "n": {"type": "integer", "minimum": 1, "maximum": MAX_N},
            "seed": {"type": "integer", "minimum": 0, "maximum": 2**62},
            "stop": {"oneOf": [stop, {"type": "array", "items": stop, "maxItems": MAX_STOP}]},
            "stream": {"type": "boolean"},
            "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        },
    }


def _openai_paths(paths: dict[str, Any], spec: Any) -> None:
    """The OpenAI-compatible routes: documented for a language model, left out elsewhere (404)."""
    for path, chat in (("/v1/completions", False), ("/v1/chat/completions", True)):
        if "generate" not in spec.verbs:
            paths.pop(path, None)
            continue
        op = paths[path]["post"]
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _openai_body(spec, chat)}}}
        for response in op["responses"].values():
            response["content"] = {"application/json": {"schema": OPENAI_ERROR}}
        op["responses"]["200"] = {
            "description": "the completion, or (stream: true) server-sent events ending in data: [DONE]",
            "content": {**JSON_ANSWER, "text/event-stream": {"schema": {"type": "string"}}},
        }


SAMPLE = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 1, "maximum": MAX_SAMPLES},
        "seed": {"type": "integer", "minimum": 0},
        "format": {"type": "string", "enum": ["png", "json"]},
    },
}
JSON_ANSWER = {"application/json": {"schema": {"type": "object"}}}


def _verb_body(spec: Any, verb: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request content, 200 content) of one v1 verb."""
    shape = list(spec.input_spec.shape)
    limits = spec.limits
    if verb == "generate":
        vocab = (spec.tokenizer or {}).get("vocab", "")
        ctx = spec.config.get("context", 1)
        body = {"application/json": {"schema": _generate(vocab, ctx, limits.max_new_tokens)}}
        return body, {**JSON_ANSWER, "application/x-ndjson": {"schema": {"type": "string"}}}
    if verb == "sample":
        return {"application/json": {"schema": SAMPLE}}, {**JSON_ANSWER, "image/png": {}}
    if verb == "decode":
        return {
            "application/json": {"schema": _instances([spec.config["latent_dim"]], limits.max_instances)}
        }, JSON_ANSWER
    schema = _explain(shape, limits.max_instances) if verb == "explain" else _instances(shape, limits.max_instances)
    content = {"application/json": {"schema": schema}}
    if len(shape) == 3 and shape[0] == 1:  # an image model also takes one PNG
        content["image/png"] = {"schema": {"type": "string", "format": "binary"}}
    return content, JSON_ANSWER


def _error_responses(op: dict[str, Any]) -> None:
    responses = op.setdefault("responses", {})
    responses.pop("422", None)  # the routes validate by hand: a bad request is a 400
    for status, why in ERRORS.items():
        responses.setdefault(status, {"description": why, "content": {"application/json": {"schema": ERROR}}})


def document(base: dict[str, Any], spec: Any, names: list[str]) -> dict[str, Any]:
    """`base` (FastAPI's document) for the app `spec` (an IngressSpec) serving models `names`:
    POST /v1/models/{target} becomes one path per model and verb with its own body."""
    doc = copy.deepcopy(base)
    paths = doc.get("paths", {})
    generic = paths.get("/v1/models/{target}", {}).pop("post", None)
    versions = [spec.version] if spec.version else []
    for path, item in paths.items():
        for op in item.values():
            for p in op.get("parameters", []):
                if p.get("in") == "path" and p["name"] == "target":
                    p["schema"] = {"type": "string", "enum": names}
                elif p.get("in") == "path" and p["name"] == "version":
                    p["schema"] = {"type": "string", "enum": versions or ["none"]}
            _error_responses(op)
            if path.endswith("/infer"):
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": V2_BODY}}}
                op["description"] = (
                    "Open Inference Protocol v2. Binary tensors (tritonclient's default) follow the JSON "
                    "header, whose length is the Inference-Header-Content-Length header."
                )
                op["responses"]["200"] = {
                    "description": "the outputs (binary ones after the JSON header)",
                    "content": {**JSON_ANSWER, "application/octet-stream": {}},
                }
    for name in names:
        for verb in spec.verbs:
            if generic is None:
                break
            op = copy.deepcopy(generic)
            op["operationId"] = f"{verb}_{name}".replace("-", "_").replace(".", "_")
            op["summary"] = f"{verb} with {name}"
            op["parameters"] = [p for p in op.get("parameters", []) if p.get("in") != "path"]
            body, answer = _verb_body(spec, verb)
            op["requestBody"] = {"required": verb != "sample", "content": body}
            _error_responses(op)
            op["responses"]["200"] = {"description": f"the {verb} answer", "content": answer}
            paths[f"/v1/models/{name}:{verb}"] = {"post": op}
    if not paths.get("/v1/models/{target}"):
        paths.pop("/v1/models/{target}", None)
    _openai_paths(paths, spec)
    return doc
