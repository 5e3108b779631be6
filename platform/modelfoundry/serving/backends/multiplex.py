"""Many models of one family on shared replicas: Ray Serve's model multiplexing. Each replica of
the `models` deployment loads a model on its first request and keeps at most N of them, evicting
the least recently used; Serve's router sends a request to a replica that already holds its model
when there is one. The ingress takes the model id from the URL (/v1/models/<model>:predict) or
from Serve's `serve_multiplexed_model_id` header, checks it against the app's list, and calls
this deployment with it (kind: multiplex)."""

from __future__ import annotations

import asyncio

import numpy as np
from ray import serve
from ray.serve import Application

from modelfoundry.serving.app_args import MultiplexArgs
from modelfoundry.serving.backends.base import Backend, BuildContext, finite
from modelfoundry.serving.requests import RequestError
from modelfoundry.serving.runner import ModelRunner, run_model
from modelfoundry.serving.spec import IngressSpec
from modelfoundry.store import parse_ref
from modelfoundry.tasks import task_spec

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


class MultiplexBackend(Backend):
    kind = "multiplex"

    def names(self) -> list[str]:
        return list(self.spec.members or [])

    def route(self, name: str, headers, require: bool = True) -> str | None:
        """The model id, from the URL or from Serve's header when the URL names the app; None
        for the app itself when not `require`d."""
        models = self.spec.members or []
        header = headers.get(HEADER)
        if name != self.spec.name:
            if header and header != name:
                raise RequestError(400, f"the URL names model {name!r} and the {HEADER} header {header!r}")
            header = name
        if not header and not require:
            return None
        if not header:
            raise RequestError(
                400, f"name a model: /v1/models/<model>:predict or the {HEADER} header; models: {models}"
            )
        if header not in models:
            raise RequestError(404, f"unknown model {header[:100]!r}; this service serves {models}")
        return header

    def reply_fields(self, model_id: str | None, target: str | None) -> dict:
        return {"model_id": model_id}

    async def output(self, x: np.ndarray, model_id: str | None = None, target: str | None = None) -> np.ndarray:
        return finite(await self.handles[0].options(multiplexed_model_id=model_id).remote(x))


def build(args: MultiplexArgs, ctx: BuildContext) -> Application:
    """Many models of one family behind one ingress, on the shared replicas of one deployment."""
    paths, metas = {}, []
    for ref in args.models:
        name, version = parse_ref(ref)
        found, meta = ctx.load_meta(name, version if ":" in ref else args.version)
        if meta.task is None or task_spec(meta.task).tensor_verb != "predict":
            raise ValueError(f"multiplexed model {ref!r} is a {meta.task} model; only predict models multiplex")
        paths[ref] = found.uri
        metas.append(meta)
    kinds = {(m.family, m.task, m.input_spec.shape) for m in metas}
    if len(kinds) > 1:
        raise ValueError(f"multiplexed models must share family, task and input shape; they have {sorted(kinds)}")
    models = models_deployment(args.max_models_per_replica).options(**ctx.stages.serve_options()).bind(paths)
    spec = IngressSpec.of_many(args.name or "multiplex", "multiplex", metas[0], ctx.limits, list(paths), **ctx.common)
    return ctx.ingress.bind(spec, [models])
