"""The `:generate` verb of language models: the request, validated, and the stream's lines.
Its tokens come from the replica's continuous-batching engine (serving/continuous.py)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from modelfoundry.serving.requests import RequestError

MAX_NEW_TOKENS = 1024
MAX_TEMPERATURE = 2.0
FIELDS = ("prompt", "max_new_tokens", "temperature", "top_k", "seed", "stream")


@dataclass(frozen=True)
class GenerateRequest:
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    top_k: int | None
    seed: int | None
    stream: bool
    top_p: float | None = None  # the OpenAI API's nucleus sampling (None: off)


def _int(data: dict, key: str, default: int | None, low: int, high: int | None) -> int | None:
    v = data.get(key, default)
    if v is None and default is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < low or (high is not None and v > high):
        bound = f"from {low} to {high}" if high is not None else f">= {low}"
        raise RequestError(400, f"{key} must be an integer {bound}, got {v!r}")
    return v


def parse_generate(data: dict[str, Any], tokenizer, context: int, max_new_tokens: int) -> GenerateRequest:
    """A validated generation request; every mistake is a 400 naming the field."""
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise RequestError(400, f"unknown field(s) {unknown}; a generate request takes {list(FIELDS)}")
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise RequestError(400, f"prompt must be a non-empty string, got {prompt!r}"[:200])
    if len(prompt) > context:
        raise RequestError(400, f"prompt is {len(prompt)} characters; this model's context is {context}")
    missing = tokenizer.unknown(prompt)
    if missing:
        raise RequestError(400, f"prompt holds characters the model does not know: {missing[:10]!r}")
    temperature = data.get("temperature", 0.0)
    if (
        not isinstance(temperature, (int, float))
        or isinstance(temperature, bool)
        or not math.isfinite(temperature)
        or not 0.0 <= temperature <= MAX_TEMPERATURE
    ):
        raise RequestError(
            400, f"temperature must be a number from 0 (greedy) to {MAX_TEMPERATURE}, got {temperature!r}"
        )
    stream = data.get("stream", True)
    if not isinstance(stream, bool):
        raise RequestError(400, f"stream must be true or false, got {stream!r}")
    return GenerateRequest(
        prompt_ids=tokenizer.encode(prompt),
        max_new_tokens=_int(data, "max_new_tokens", 64, 1, max_new_tokens),  # type: ignore[arg-type]
        temperature=float(temperature),
        top_k=_int(data, "top_k", None, 1, len(tokenizer.vocab)),
        seed=_int(data, "seed", None, 0, 2**63 - 1),
        stream=stream,
    )


async def json_lines(
    runs: AsyncIterator[list[int]], tokenizer, summary: Callable[[list[int]], dict[str, Any]]
) -> AsyncIterator[bytes]:
    """The stream: one {"token", "index"} line per token, a chunk per run of tokens as they come
    (serving/continuous.Engine.tokens), then summary(ids)."""
    ids: list[int] = []
    async for run in runs:
        lines = []
        for t in run:
            ids.append(t)
            lines.append(line({"token": tokenizer.decode([t]), "index": len(ids) - 1}))
        yield b"".join(lines)
    yield line(summary(ids))


def line(obj: dict[str, Any]) -> bytes:
    """One JSON line of the stream (application/x-ndjson)."""
    return (json.dumps(obj, ensure_ascii=False) + "\n").encode()
