"""The hand-written baseline for bench/generate.py: one process, FastAPI + uvicorn + torch,
streaming JSON lines from the same model with the same KV-cache generation and the same request
validation as the platform's ingress (what a user would write instead of a Serve app).

    MODEL_PATH=models/gpt-pydocs/1 python -m uvicorn bench.fastapi_generate:app --port 8100
"""

import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from modelfoundry.data.text import CharTokenizer
from modelfoundry.serving.generation import MAX_NEW_TOKENS, json_lines, local_step, parse_generate, tokens
from modelfoundry.serving.requests import RequestError, parse_json_body
from modelfoundry.serving.runner import ModelRunner

runner = ModelRunner(os.environ["MODEL_PATH"])
tokenizer = CharTokenizer.from_spec(runner.meta.tokenizer)
context = runner.meta.config["context"]
app = FastAPI()


@app.post("/v1/models/{target}")
async def generate(target: str, request: Request):
    try:
        req = parse_generate(parse_json_body(await request.body(), 1_000_000), tokenizer, context, MAX_NEW_TOKENS)
    except RequestError as err:
        return JSONResponse({"error": err.message}, status_code=err.status)
    step, release = local_step(runner)

    def summary(ids: list[int]) -> dict:
        return {"done": True, "text": tokenizer.decode(ids), "tokens": len(ids)}

    async def stream():
        try:
            async for chunk in json_lines(tokens(step, req, context), tokenizer, summary):
                yield chunk
        finally:
            release()

    return StreamingResponse(stream(), media_type="application/x-ndjson")
