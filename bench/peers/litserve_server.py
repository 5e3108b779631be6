"""The LitServe peer for bench/serve_load.py: the same checkpoint and the same request validation
as the platform's ingress, with LitServe's standard LitAPI (decode_request -> predict ->
encode_response; the API server and the inference worker are separate processes).

    MODEL_PATH=... MODEL_NAME=cnn-digits PORT=8200 .venv-peers/bin/python bench/peers/litserve_server.py
Optional: MAX_BATCH_SIZE / BATCH_TIMEOUT_S for LitServe's own batching.
"""

import os

import litserve as ls
import numpy as np
from fastapi import HTTPException

from modelfoundry.serving.requests import RequestError, instances_array
from modelfoundry.serving.runner import ModelRunner, predictions


class Classifier(ls.LitAPI):
    def setup(self, device):
        self.runner = ModelRunner(os.environ["MODEL_PATH"], device="cpu")
        self.shape = tuple(self.runner.meta.input_spec.shape)

    def decode_request(self, request):
        try:
            return instances_array(request, self.shape, 256)
        except RequestError as err:
            raise HTTPException(err.status, err.message) from None

    def batch(self, inputs):
        return np.concatenate(inputs)

    def predict(self, x):
        return self.runner.run(x)

    def unbatch(self, output):
        return list(output[:, None])

    def encode_response(self, output):
        return {"predictions": predictions("classes", output)}


if __name__ == "__main__":
    api = Classifier(
        api_path=f"/v1/models/{os.environ['MODEL_NAME']}:predict",
        max_batch_size=int(os.environ.get("MAX_BATCH_SIZE", "1")),
        batch_timeout=float(os.environ.get("BATCH_TIMEOUT_S", "0")),
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(
        host="127.0.0.1",
        port=int(os.environ["PORT"]),
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )
