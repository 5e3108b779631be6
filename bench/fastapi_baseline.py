"""The hand-written baseline for bench/serve_load.py: one process, FastAPI + uvicorn + torch,
the same model and the same request validation as the platform's ingress.

    MODEL_PATH=models/cnn-digits/1 python -m uvicorn bench.fastapi_baseline:app --port 8100
"""

import os

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from modelfoundry.serving.requests import RequestError, instances_array, parse_json_body
from modelfoundry.serving.runner import ModelRunner, predictions

runner = ModelRunner(os.environ["MODEL_PATH"])
shape = runner.meta.input_spec.shape
app = FastAPI()


@app.post("/v1/models/{target}")
async def predict(target: str, request: Request):
    try:
        x = instances_array(parse_json_body(await request.body(), 1_000_000), shape, 256)
    except RequestError as err:
        return JSONResponse({"error": err.message}, status_code=err.status)
    return {"predictions": predictions("classes", runner.run(x))}
