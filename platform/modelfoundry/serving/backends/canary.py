"""kind canary: versions of one model in the ingress replica (one load per distinct version),
each request routed by the traffic weights, at random or by the hash of a sticky header's value.
The weights are the ingress deployment's user_config: `foundry rollout` changes them in place
(serving/rollout.py), and `reconfigure` applies them on live replicas."""

from __future__ import annotations

import hashlib
import random

import numpy as np
from ray.serve import Application

from modelfoundry.models import family_spec
from modelfoundry.serving.app_args import CanaryArgs
from modelfoundry.serving.backends.base import Backend, BuildContext, finite
from modelfoundry.serving.runner import ModelRunner
from modelfoundry.serving.spec import Arm, IngressSpec, check_traffic
from modelfoundry.serving.stage import batcher, run


def arm_ref(label: str) -> str:
    """A traffic key as a store version: a number or latest as is, else an alias."""
    return label if label.isdigit() or label == "latest" else f"@{label}"


class CanaryBackend(Backend):
    kind = "canary"

    def __init__(self, spec: IngressSpec, handles: list) -> None:
        super().__init__(spec, handles)
        self.arms = {a.label: a for a in spec.arms}
        loaded: dict[str, tuple] = {}
        for a in spec.arms:
            if a.path not in loaded:
                runner = ModelRunner(a.path)
                loaded[a.path] = (runner, batcher(runner, spec.batching))
        self.models = {a.label: loaded[a.path] for a in spec.arms}
        self.traffic: list[tuple[str, int]] = [(a.label, 100 if i == 0 else 0) for i, a in enumerate(spec.arms)]

    def reconfigure(self, user_config: dict) -> None:
        """{"traffic": {label: percent}}: Serve calls this on live replicas when only the
        user_config changed."""
        traffic = (user_config or {}).get("traffic")
        if traffic is None:
            return
        check_traffic(traffic, list(self.arms))
        self.traffic = [(label, int(traffic.get(label, 0))) for label in self.arms]

    def pick(self, headers) -> str:
        """The arm for one request: by weight, at random, or by the hash of the sticky header's
        value (the same key always lands in the same arm while the weights stay)."""
        key = headers.get(self.spec.sticky_header) if self.spec.sticky_header else None
        if key:
            digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
            point = (int.from_bytes(digest, "big") % 10000) / 100
        else:
            point = random.uniform(0, 100)
        total = 0
        for label, weight in self.traffic:
            total += weight
            if point < total:
                return label
        return next(label for label, w in reversed(self.traffic) if w > 0)

    def version(self, target: str | None) -> str:
        return self.arms[target].version if target is not None else self.spec.version

    def reply_fields(self, model_id: str | None, target: str | None) -> dict:
        return {"model_version": self.arms[target].version, "arm": target} if target else {}

    async def output(self, x: np.ndarray, model_id: str | None = None, target: str | None = None) -> np.ndarray:
        runner, batched = self.models[target or self.traffic[0][0]]
        return finite(await run(runner, batched, x))

    def describe(self) -> dict:
        return {
            "traffic": {label: {"version": self.arms[label].version, "weight": w} for label, w in self.traffic},
            "sticky_header": self.spec.sticky_header,
        }


def build(args: CanaryArgs, ctx: BuildContext) -> Application:
    arms, metas, found = [], [], []
    pinned = args.arm_versions or {}
    for label in args.traffic:
        where, meta = ctx.load_meta(args.model, pinned.get(label) or arm_ref(label))
        if family_spec(meta.family).verbs != ("predict",):
            raise ValueError(f"a canary serves predict models; {args.model} is a {meta.family} ({meta.task})")
        arms.append(Arm(label, str(where.version), where.uri))
        metas.append(meta)
        found.append(where)
    shapes = {(m.family, m.input_spec.shape, m.task) for m in metas}
    if len(shapes) > 1:
        raise ValueError(f"the versions in traffic must share family, input shape and task; they have {sorted(shapes)}")
    name = args.name or args.model
    spec = IngressSpec.from_meta(
        name, "canary", found[0], metas[0], ctx.limits, arms=tuple(arms), sticky_header=args.sticky_header, **ctx.common
    )
    return ctx.ingress.options(user_config={"traffic": dict(args.traffic)}).bind(spec)
