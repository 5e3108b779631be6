"""Many models of one family on shared replicas: Ray Serve's model multiplexing. Each replica of
the `models` deployment loads a model on its first request and keeps at most N of them, evicting
the least recently used; Serve's router sends a request to a replica that already holds its model
when there is one. The ingress takes the model id from the URL (/v1/models/<model>:predict) or
from Serve's `serve_multiplexed_model_id` header, checks it against the app's list, and calls
this deployment with it (serving/apps.py, kind: multiplex)."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve

from modelfoundry.serving.runner import ModelRunner, run_model

HEADER = "serve_multiplexed_model_id"  # Serve's own name for it


def models_deployment(max_models_per_replica: int):
    """The deployment class, with its LRU size: `@serve.multiplexed` takes it at class definition,
    and Serve detects multiplexing from the class, so the class is made per size."""

    @serve.deployment(name="models")
    class Models:
        def __init__(self, paths: dict[str, str]) -> None:
            self.paths = paths  # model id -> model-store path (only ids the ingress has checked)
            self.loads: list[str] = []  # every load on this replica, in order (stats())

        @serve.multiplexed(max_num_models_per_replica=max_models_per_replica)
        async def model(self, model_id: str) -> ModelRunner:
            runner = await asyncio.to_thread(ModelRunner, self.paths[model_id])  # sha256-checked
            self.loads.append(model_id)
            return runner

        async def __call__(self, x: np.ndarray) -> np.ndarray:
            runner = await self.model(serve.get_multiplexed_model_id())
            return await run_model(runner, x)

        def stats(self) -> dict:
            return {"loads": list(self.loads), "max_models_per_replica": max_models_per_replica}

    return Models
