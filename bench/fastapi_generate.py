"""The hand-written baseline for bench/generate.py: one process, FastAPI + uvicorn + torch,
streaming JSON lines from the same model with the same validation as the platform's ingress,
each request decoded on its own (its own KV cache, one token per forward pass, a thread per
step): what a user would write instead, and the per-request decoding the platform replaced.

    MODEL_PATH=models/gpt-pydocs/1 python -m uvicorn bench.fastapi_generate:app --port 8100
"""

import asyncio
import os

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from modelfoundry.data.text import CharTokenizer
from modelfoundry.models.transformer import generate as decode
from modelfoundry.serving.generation import MAX_NEW_TOKENS, json_lines, parse_generate
from modelfoundry.serving.requests import RequestError, parse_json_body
from modelfoundry.serving.runner import ModelRunner

runner = ModelRunner(os.environ["MODEL_PATH"])
tokenizer = CharTokenizer.from_spec(runner.meta.tokenizer)
context = runner.meta.config["context"]
app = FastAPI()


async def tokens(req):
    """The request's tokens, each as a run of one (json_lines' input), decoded alone."""
    steps = decode(runner.model, req.prompt_ids, req.max_new_tokens, req.temperature, req.top_k, req.seed)
    while (token := await asyncio.to_thread(next, steps, None)) is not None:
        yield [token]


@app.post("/v1/models/{target}")
async def generate(target: str, request: Request):
    try:
        req = parse_generate(parse_json_body(await request.body(), 1_000_000), tokenizer, context, MAX_NEW_TOKENS)
    except RequestError as err:
        return JSONResponse({"error": err.message}, status_code=err.status)

    def summary(ids: list[int]) -> dict:
        return {"done": True, "text": tokenizer.decode(ids), "tokens": len(ids)}

    return StreamingResponse(json_lines(tokens(req), tokenizer, summary), media_type="application/x-ndjson")


torch.set_grad_enabled(False)
