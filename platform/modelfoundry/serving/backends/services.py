"""A family whose verbs are served by named stage groups (FamilySpec.services: the VAE's encoder
and decoder), each its own deployment; `kind: vae` asks for this shape by name."""

from __future__ import annotations

import numpy as np
from ray.serve import Application

from modelfoundry.models import family_spec
from modelfoundry.serving.app_args import VaeArgs
from modelfoundry.serving.backends.base import Backend, BuildContext, finite
from modelfoundry.serving.spec import IngressSpec
from modelfoundry.serving.stage import Stage
from modelfoundry.store import CheckpointMeta, StoreVersion


class ServicesBackend(Backend):
    kind = "services"

    async def service(self, index: int, x: np.ndarray) -> np.ndarray:
        return finite(await self.handles[index].remote(x))


def bind(name: str, found: StoreVersion, meta: CheckpointMeta, ctx: BuildContext) -> Application:
    family = family_spec(meta.family)
    services = [
        Stage.options(name=n, **ctx.stages.serve_options()).bind(found.uri, list(g), ctx.batching)
        for n, g in family.services or ()
    ]
    groups = [list(g) for _, g in family.services or ()]
    spec = IngressSpec.from_meta(name, "services", found, meta, ctx.limits, groups=groups, **ctx.common)
    return ctx.ingress.bind(spec, services)


def build(args: VaeArgs, ctx: BuildContext) -> Application:
    found, meta = ctx.load_meta(args.model, args.version)
    if not family_spec(meta.family).services:
        raise ValueError(f"kind vae needs a VAE; model {args.model!r} is a {meta.family}")
    return bind(args.name or args.model, found, meta, ctx)
