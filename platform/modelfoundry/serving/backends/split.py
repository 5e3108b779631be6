"""kind model with `split`: the model cut into stage services that call each other in order
through DeploymentHandles (each its own deployment: replicas, resources, placement); a language
model's generation steps go through them too, each stage holding its blocks' KV cache."""

from __future__ import annotations

import asyncio
import random
import time
from functools import partial
from typing import Any

import numpy as np
from ray.serve import Application

from modelfoundry.models import family_spec
from modelfoundry.serving.app_args import ModelArgs
from modelfoundry.serving.backends.base import Backend, BuildContext, finite
from modelfoundry.serving.decoders import RemoteDecoder
from modelfoundry.serving.explain import ExplainRequest, integrated_gradients, stage_chain
from modelfoundry.serving.slo import ShareReader, Window
from modelfoundry.serving.spec import Arm, IngressSpec
from modelfoundry.serving.stage import Stage
from modelfoundry.store import CheckpointMeta, StoreVersion, parse_ref

MODEL, VARIANT = "model", "variant"


class SplitBackend(Backend):
    kind = "split"

    def __init__(self, spec: IngressSpec, handles: list) -> None:
        super().__init__(spec, handles)
        # with a latency objective: the cheaper variant is the last handle, its share from the plan
        self.variant = self.handles.pop() if spec.variant else None
        self.share = ShareReader(spec.name) if spec.slo else None
        self.chain = Window()  # the full model's time through its stages, hops and queues included

    def pick(self, headers) -> str | None:
        """With an objective, "variant" for the plan's share of requests (at random), else "model"."""
        if self.share is None:
            return None
        self.share.start()
        return VARIANT if self.variant and random.random() < self.share.share else MODEL

    def version(self, target: str | None) -> str:
        return self.spec.variant.version if target == VARIANT and self.spec.variant else self.spec.version

    def reply_fields(self, model_id: str | None, target: str | None) -> dict[str, Any]:
        return {"model_version": self.version(target), "variant": target == VARIANT} if target else {}

    async def output(self, x: np.ndarray, model_id: str | None = None, target: str | None = None) -> np.ndarray:
        if target == VARIANT:
            return finite(await self.variant.remote(x))
        t0 = time.perf_counter()
        for stage in self.handles:  # each hop is a call to another service
            x = await stage.remote(x)
        self.chain.add(time.perf_counter() - t0)
        return finite(x)

    def autoscaling_stats(self) -> dict[str, float]:
        """The chain's p99 (ms): what the planner's prediction is checked against."""
        stats = self.chain.stats()
        return {"chain_p99_ms": stats["p99_ms"]} if "p99_ms" in stats else {}

    def describe(self) -> dict[str, Any]:
        if self.share is None:
            return {}
        return {"slo": self.share.plan or None, "variant": self.spec.variant.path if self.spec.variant else None}

    async def explain(self, req: ExplainRequest, classes: bool) -> dict[str, Any]:
        """The stages as one differentiable chain: forward calls each stage, backward asks each
        for its vector-Jacobian product (Stage.vjp). Captum runs in a thread; each stage call it
        makes is awaited on this replica's event loop (where Serve's router runs) while the thread
        waits for it."""
        loop = asyncio.get_running_loop()

        def blocking(call):
            return lambda *args: asyncio.run_coroutine_threadsafe(call(*args), loop).result()

        async def forward(h, x):
            return await h.remote(x)

        async def backward(h, x, g):
            return await h.options(method_name="vjp").remote(x, g)

        calls = [(blocking(partial(forward, h)), blocking(partial(backward, h))) for h in self.handles]
        return await asyncio.to_thread(integrated_gradients, stage_chain(calls), req, classes)

    def decoders(self) -> list:
        """One per micro-batch (default: one per stage, so every stage has a step to work on);
        each stage service holds its blocks' rows of each micro-batch."""
        n = self.spec.limits.micro_batches or len(self.handles)
        return [RemoteDecoder(self.handles) for _ in range(n)]


def bind(
    args: ModelArgs, name: str, found: StoreVersion, meta: CheckpointMeta, groups: list[list[int]], ctx: BuildContext
) -> Application:
    placement = args.stage_placement or [{}] * len(groups)
    if len(placement) != len(groups):
        raise ValueError(f"stage_placement has {len(placement)} entries; the split has {len(groups)} stages {groups}")
    where = _stage_versions(args, found, meta, len(groups), ctx)
    slo = args.slo
    if slo is not None and slo.max_replicas_total < len(groups) + bool(slo.variant):
        raise ValueError(
            f"slo.max_replicas_total {slo.max_replicas_total} is below one replica per stage ({len(groups)})"
            + (" plus the variant's" if slo.variant else "")
        )
    if slo is not None and "predict" not in family_spec(meta.family).verbs:
        raise ValueError(f"slo applies to predicting models; {args.model} is a {meta.family}")
    synthetic = args.synthetic_ms
    stages = [
        Stage.options(name=f"stage-{i}", **_options(ctx, slo, placement[i])).bind(
            where[i].uri, g, ctx.batching, synthetic
        )
        for i, g in enumerate(groups)
    ]
    variant = _variant(args, found, meta, ctx) if slo and slo.variant else None
    if variant is not None:
        stages.append(
            Stage.options(name=VARIANT, **_options(ctx, slo, {})).bind(
                variant.path, None, ctx.batching, slo.variant_synthetic_ms
            )
        )
    # :explain runs backward through the stages: not through a quantized stage sibling
    explainable = not any(args.stage_models or [])
    spec = IngressSpec.from_meta(
        name,
        "split",
        found,
        meta,
        ctx.limits,
        explainable=explainable,
        groups=groups,
        slo=slo is not None,
        variant=variant,
        **ctx.common,
    )
    return ctx.ingress.bind(spec, stages)


def _options(ctx: BuildContext, slo, placement: dict[str, float]) -> dict[str, Any]:
    """A stage's deployment options; with an objective, autoscaled by the planner."""
    opts = ctx.stages.serve_options(extra_resources=placement)
    if slo is not None:
        opts.pop("num_replicas", None)
        opts["autoscaling_config"] = slo.autoscaling(slo.max_replicas_total)
    return opts


def _variant(args: ModelArgs, found: StoreVersion, meta: CheckpointMeta, ctx: BuildContext) -> Arm:
    """The cheaper variant named in slo.variant: another version of the model (an alias such as
    @fast) or a compressed sibling, taking the same inputs for the same task."""
    ref = args.slo.variant
    name, version = (args.model, ref) if ref.startswith("@") else parse_ref(ref)
    other, other_meta = ctx.load_meta(name, version)
    if (other.name, other.version) == (found.name, found.version):
        raise ValueError(f"slo.variant {ref!r} is the served version itself ({found.ref}); name a cheaper one")
    mine = (meta.input_spec.shape, meta.task)
    theirs = (other_meta.input_spec.shape, other_meta.task)
    if mine != theirs:
        raise ValueError(
            f"slo.variant {ref!r} takes {theirs[0]} for {theirs[1]}; {found.ref} takes {mine[0]} for {mine[1]}"
        )
    return Arm(VARIANT, str(other.version) if other.name == found.name else other.ref, other.uri)


def _stage_versions(
    args: ModelArgs, found: StoreVersion, meta: CheckpointMeta, n: int, ctx: BuildContext
) -> list[StoreVersion]:
    """The model each stage loads: the app's, or a compressed sibling named in stage_models."""
    if args.stage_models is None:
        return [found] * n
    if len(args.stage_models) != n:
        raise ValueError(f"stage_models has {len(args.stage_models)} entries; the split has {n} stages")
    out = []
    for ref in args.stage_models:
        if ref is None:
            out.append(found)
            continue
        other, other_meta = ctx.load_meta(*parse_ref(ref))
        if (other_meta.family, other_meta.config) != (meta.family, meta.config):
            raise ValueError(
                f"stage_models: {ref!r} ({other_meta.family} {other_meta.config}) does not have the stage "
                f"boundaries of {args.model!r} ({meta.family} {meta.config}); use a quantized copy of it"
            )
        out.append(other)
    return out
