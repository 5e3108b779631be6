"""The OpenAI-compatible API of a language-model app, beside `:generate` on the same ingress and
the same continuous-batching engine: `POST /v1/completions`, `POST /v1/chat/completions` and the
OpenAI fields of `GET /v1/models`. Streams are server-sent events ending in `data: [DONE]`; errors
are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`; API keys come as
`Authorization: Bearer`.

Chat template (the models are character-level, trained on plain text): each message is written
as `<Role>: <content>` on its own line (System, User, Assistant), then `Assistant:` for the reply.
Sampling: `temperature` (OpenAI's default 1), `top_p`, `seed` (choice i of `n` samples with seed +
i), `stop` (up to 4 strings, never sent), `max_tokens` (16 for completions, as OpenAI's, 64 for chat).
This module parses a request; serving/openai_reply.py runs it and writes the reply or the stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from modelfoundry.serving.generation import MAX_TEMPERATURE, GenerateRequest
from modelfoundry.serving.requests import RequestError

ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
MAX_N, MAX_STOP = 8, 4
# what OpenAI clients may send that this server does not do: accepted at the value meaning "off"
NEUTRAL = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (False,),
    "best_of": (None, 1),
    "suffix": (None,),
    "logit_bias": (None, {}),
    "response_format": (None, {"type": "text"}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, False, True),
}
COMMON = {
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "n",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    *NEUTRAL,
}


def fail(status: int, message: str, param: str | None = None, code: str | None = None) -> RequestError:
    err = RequestError(status, message)
    err.param, err.code = param, code  # type: ignore[attr-defined]
    return err


def error_body(err: RequestError) -> dict[str, Any]:
    kind = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
    return {
        "error": {
            "message": err.message,
            "type": kind.get(err.status, "server_error" if err.status >= 500 else "invalid_request_error"),
            "param": getattr(err, "param", None),
            "code": getattr(err, "code", None),
        }
    }


@dataclass(frozen=True)
class Completion:
    """A parsed OpenAI request: the prompt text, its sampling, how many choices, how to reply."""

    chat: bool
    prompt: str
    request: GenerateRequest  # choice 0's; choice i's seed is seed + i
    n: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


def parse(data: Any, chat: bool, model: str, tokenizer, context: int, max_new_tokens: int) -> Completion:
    """A completions or chat request, validated; every mistake a 400 naming the field (`param`)."""
    if not isinstance(data, dict):
        raise fail(400, "the request body must be a JSON object")
    allowed = COMMON | ({"messages"} if chat else {"prompt"})
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise fail(400, f"unsupported field(s) {unknown}", unknown[0], "unsupported_parameter")
    for key, values in NEUTRAL.items():
        if key in data and data[key] not in values:
            raise fail(400, f"{key} is not supported by this server (send {values[0]!r} or leave it out)", key)
    if data.get("model") != model:
        raise fail(
            404,
            f"the model {data.get('model')!r} does not exist; this service serves {model!r}",
            "model",
            "model_not_found",
        )
    prompt = render_chat(data.get("messages")) if chat else _prompt(data.get("prompt"))
    if len(prompt) > context:
        raise fail(
            400,
            f"the prompt is {len(prompt)} characters; this model's context is {context}",
            "messages" if chat else "prompt",
            "context_length_exceeded",
        )
    missing = tokenizer.unknown(prompt)
    if missing:
        raise fail(
            400,
            f"the prompt holds characters the model does not know: {missing[:10]!r}",
            "messages" if chat else "prompt",
        )
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    max_tokens = _integer(data, "max_tokens", 64 if chat else 16, 1, max_new_tokens, max_tokens)
    temperature = _number(data, "temperature", 1.0, 0.0, MAX_TEMPERATURE)
    top_p = _number(data, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise fail(400, "top_p must be above 0 and at most 1", "top_p")
    seed = _integer(data, "seed", None, 0, 2**63 - 1 - MAX_N)
    n = _integer(data, "n", 1, 1, MAX_N)
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise fail(400, f"stream must be true or false, got {stream!r}", "stream")
    options = data.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise fail(400, "stream_options takes include_usage only", "stream_options")
    request = GenerateRequest(
        tokenizer.encode(prompt), max_tokens, temperature, None, seed, stream, top_p=top_p if top_p < 1.0 else None
    )
    return Completion(chat, prompt, request, n, _stop(data.get("stop")), stream, bool(options.get("include_usage")))


def render_chat(messages: Any) -> str:
    """The chat template (module docstring)."""
    if not isinstance(messages, list) or not messages:
        raise fail(400, "messages must be a non-empty list of {role, content} objects", "messages")
    lines = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise fail(400, f"messages[{i}] must have a role of {sorted(ROLES)}", "messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: text only
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise fail(400, f"messages[{i}].content parts must be text parts", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise fail(400, f"messages[{i}].content must be a string", "messages")
        lines.append(f"{ROLES[m['role']]}: {content}\n")
    return "".join(lines) + "Assistant:"


def _prompt(prompt: Any) -> str:
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise fail(400, "prompt must be a non-empty string (or a list of one)", "prompt")
    return prompt


def _integer(data: dict, key: str, default: int | None, low: int, high: int, value: Any = ...) -> int | None:
    v = data.get(key, default) if value is ... else (default if value is None else value)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise fail(400, f"{key} must be an integer from {low} to {high}, got {v!r}", key)
    return v


def _number(data: dict, key: str, default: float, low: float, high: float) -> float:
    v = data.get(key)
    v = default if v is None else v
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not low <= v <= high:
        raise fail(400, f"{key} must be a number from {low} to {high}, got {v!r}", key)
    return float(v)


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOP or not all(isinstance(s, str) and s for s in stops):
        raise fail(400, f"stop must be a non-empty string or a list of at most {MAX_STOP} of them", "stop")
    return tuple(stops)


def models_list(name: str, created: int) -> dict:
    """OpenAI's fields of GET /v1/models (the KServe `models` beside them)."""
    return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "modelfoundry"}]}
