"""The BentoML peer for bench/serve_load.py: the same checkpoint and the same request validation
as the platform's ingress, as a BentoML 1.4 service (one worker process; the API method is a
plain `def`, which BentoML runs in its thread pool, its documented form for model code).

    MODEL_PATH=... MODEL_NAME=cnn-digits .venv-peers/bin/bentoml serve bench.peers.bentoml_service:Classifier \
        --host 127.0.0.1 --port 8300
"""

import os
from typing import Any

import bentoml
from bentoml.exceptions import InvalidArgument

from modelfoundry.serving.requests import RequestError, instances_array
from modelfoundry.serving.runner import ModelRunner, predictions

ROUTE = f"/v1/models/{os.environ.get('MODEL_NAME', 'model')}:predict"


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Classifier:
    def __init__(self) -> None:
        self.runner = ModelRunner(os.environ["MODEL_PATH"], device="cpu")
        self.shape = tuple(self.runner.meta.input_spec.shape)

    @bentoml.api(route=ROUTE)
    def predict(self, instances: list[Any]) -> dict:
        try:
            x = instances_array({"instances": instances}, self.shape, 256)
        except RequestError as err:
            raise InvalidArgument(err.message) from None
        return {"predictions": predictions("classes", self.runner.run(x))}
