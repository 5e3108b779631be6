"""The hand-written baseline for `bench/serve_load.py --multiplex`: one process, FastAPI +
uvicorn + torch, an LRU of MAX_MODELS loaded models (functools-style, an OrderedDict), the model
named in the URL, the same checkpoint loading (sha256-checked) and request validation as the
platform. What a team writes before reaching for Serve's multiplexing.

    STORE=models MODELS=digits-00,digits-01 MAX_MODELS=8 python -m uvicorn bench.fastapi_multiplex:app --port 8101
"""

import os
from collections import OrderedDict

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from modelfoundry.serving.requests import RequestError, instances_array, parse_json_body
from modelfoundry.serving.runner import ModelRunner, predictions
from modelfoundry.store import resolve

STORE, MAX_MODELS = os.environ["STORE"], int(os.environ["MAX_MODELS"])
PATHS = {m: resolve(STORE, m).uri for m in os.environ["MODELS"].split(",")}
loaded: OrderedDict[str, ModelRunner] = OrderedDict()
app = FastAPI()


def model(name: str) -> ModelRunner:
    if name in loaded:
        loaded.move_to_end(name)
        return loaded[name]
    if len(loaded) >= MAX_MODELS:
        loaded.popitem(last=False)  # the least recently used
    loaded[name] = ModelRunner(PATHS[name])
    return loaded[name]


@app.post("/v1/models/{target}")
async def predict(target: str, request: Request):
    name, _, _ = target.rpartition(":")
    if name not in PATHS:
        return JSONResponse({"error": f"unknown model {name!r}"}, status_code=404)
    runner = model(name)
    try:
        x = instances_array(parse_json_body(await request.body(), 1_000_000), runner.meta.input_spec.shape, 256)
    except RequestError as err:
        return JSONResponse({"error": err.message}, status_code=err.status)
    return {"predictions": predictions("classes", runner.run(x)), "model_id": name}
