"""kind model, monolithic: the model runs in the ingress replica itself (no network hop). The
builder of every `kind: model` app lives here too: it picks this shape, `split` (stage
services) or `services` (a family's named stage groups) from the model and the args."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import torch
from ray.serve import Application

from modelfoundry.models import build_model, family_spec
from modelfoundry.models.stages import resolve_split
from modelfoundry.serving.app_args import ModelArgs
from modelfoundry.serving.backends import services, split
from modelfoundry.serving.backends.base import Backend, BuildContext, finite
from modelfoundry.serving.decoders import LocalDecoder
from modelfoundry.serving.explain import ExplainRequest, integrated_gradients
from modelfoundry.serving.runner import ModelRunner
from modelfoundry.serving.spec import IngressSpec
from modelfoundry.serving.stage import batcher, run


class LocalBackend(Backend):
    kind = "local"

    def __init__(self, spec: IngressSpec, handles: list) -> None:
        super().__init__(spec, handles)
        self.runner = ModelRunner(spec.model_path)
        self.batcher = batcher(self.runner, spec.batching)

    async def output(self, x: np.ndarray, model_id: str | None = None, target: str | None = None) -> np.ndarray:
        return finite(await run(self.runner, self.batcher, x))

    async def explain(self, req: ExplainRequest, classes: bool) -> dict[str, Any]:
        module, device = self.runner.module, self.runner.device

        def forward(x: torch.Tensor) -> torch.Tensor:
            return module(x.to(device)).float().cpu()

        return await asyncio.to_thread(integrated_gradients, forward, req, classes)

    def decoders(self) -> list:
        return [LocalDecoder(self.runner)]


def build(args: ModelArgs, ctx: BuildContext) -> Application:
    found, meta = ctx.load_meta(args.model, args.version)
    name = args.name or args.model
    if family_spec(meta.family).services:  # verbs served by named stage groups (the VAE's)
        if args.split is not None:
            raise ValueError(f"{args.model} is a {meta.family}: it is served as its services, not split")
        return services.bind(name, found, meta, ctx)
    model = build_model(meta.family, "default", **meta.config)  # structure only, to cut it
    groups = resolve_split(model, args.split)
    if len(groups) > 1:
        return split.bind(args, name, found, meta, groups, ctx)
    spec = IngressSpec.from_meta(name, "local", found, meta, ctx.limits, explainable=True, groups=groups, **ctx.common)
    return ctx.ingress.bind(spec)
