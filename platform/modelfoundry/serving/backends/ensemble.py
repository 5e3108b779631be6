"""kind ensemble: several classifiers as their own deployments, called in parallel; the answer is
the log of their mean probabilities."""

from __future__ import annotations

import asyncio

import numpy as np
from ray.serve import Application

from modelfoundry.serving.app_args import EnsembleArgs
from modelfoundry.serving.backends.base import Backend, BuildContext, finite
from modelfoundry.serving.runner import softmax
from modelfoundry.serving.spec import IngressSpec
from modelfoundry.serving.stage import Stage
from modelfoundry.store import parse_ref
from modelfoundry.tasks import task_spec


class EnsembleBackend(Backend):
    kind = "ensemble"

    async def output(self, x: np.ndarray, model_id: str | None = None, target: str | None = None) -> np.ndarray:
        outs = await asyncio.gather(*(m.remote(x) for m in self.handles))  # fan out in parallel
        return np.log(np.mean([softmax(finite(o)) for o in outs], axis=0) + 1e-12)


def build(args: EnsembleArgs, ctx: BuildContext) -> Application:
    members, metas = [], []
    for i, ref in enumerate(args.models):
        name, version = parse_ref(ref)
        found, meta = ctx.load_meta(name, version)
        if meta.task is None or not task_spec(meta.task).classifies:
            raise ValueError(f"ensemble member {ref!r} is a {meta.task} model; members must be classifiers")
        metas.append(meta)
        members.append(
            Stage.options(name=f"member-{i}-{name}", **ctx.stages.serve_options()).bind(found.uri, None, ctx.batching)
        )
    shapes = {m.input_spec.shape for m in metas}
    if len(shapes) > 1:
        raise ValueError(f"ensemble members take different input shapes {sorted(shapes)}; they must agree")
    spec = IngressSpec.of_many(args.name or "ensemble", "ensemble", metas[0], ctx.limits, args.models, **ctx.common)
    return ctx.ingress.bind(spec, members)
