"""What the app builder hands the ingress replica: one typed, frozen object with only what the
ingress uses (not the whole model.json with its per-epoch history)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from modelfoundry.models import family_spec
from modelfoundry.store import CheckpointMeta, StoreVersion
from modelfoundry.store.meta import InputSpec
from modelfoundry.tasks import task_spec

MAX_ARMS = 4
ARM_RE = r"^([0-9]{1,9}|latest|[A-Za-z][A-Za-z0-9_-]{0,31})$"


def check_traffic(traffic: dict[str, int], arms: list[str] | None = None) -> None:
    """Weights are whole percents summing to 100 over 1 to MAX_ARMS arms (of `arms` when given)."""
    if not 1 <= len(traffic) <= MAX_ARMS:
        raise ValueError(f"traffic names {len(traffic)} versions; give 1 to {MAX_ARMS}")
    for label, w in traffic.items():
        if not re.match(ARM_RE, str(label)):
            raise ValueError(f"traffic key {label!r} must be an alias, a version number or latest")
        if not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= 100:
            raise ValueError(f"traffic weight of {label!r} must be a whole percent 0-100, got {w!r}")
    if sum(traffic.values()) != 100:
        raise ValueError(f"traffic weights must sum to 100, got {sum(traffic.values())} ({traffic})")
    if arms is not None and set(traffic) - set(arms):
        raise ValueError(f"traffic names {sorted(set(traffic) - set(arms))}; this app serves {arms}")


def can_explain(meta: CheckpointMeta, task: str, verbs: tuple[str, ...]) -> bool:
    """:explain needs a predicting model of a class or value (tasks.TaskSpec.explainable) with
    float inputs and float weights (int8 kernels have no gradients)."""
    return (
        "predict" in verbs
        and task_spec(task).explainable
        and meta.input_spec.dtype == "float32"
        and meta.codec == "fp32"
    )


@dataclass(frozen=True)
class Limits:
    max_instances: int
    max_body_bytes: int
    max_new_tokens: int  # language models: the most tokens one request may ask for
    max_response_bytes: int = 8_000_000  # OIP v2: the largest reply (413 beyond it)
    # language models (app_args.CommonArgs): rows per decode step, KV budget, queue, micro-batches
    max_generations: int = 64
    max_kv_tokens: int | None = None
    max_queued_generations: int = 256
    micro_batches: int | None = None

    def check_generation(self, context: int) -> None:
        """A KV budget must hold one sequence of the model's context."""
        if self.max_kv_tokens is not None and self.max_kv_tokens < context:
            raise ValueError(f"max_kv_tokens {self.max_kv_tokens} is below the model's context ({context} positions)")


@dataclass(frozen=True)
class Arm:
    """One version of a canary app: its label in the traffic split (an alias such as champion, a
    version number, or latest), the store version it resolved to at deploy time, and its path."""

    label: str
    version: str
    path: str


@dataclass(frozen=True)
class IngressSpec:
    name: str  # the route: /v1/models/<name>:<verb>
    kind: Literal["local", "split", "services", "ensemble", "multiplex", "canary"]  # the Backend
    family: str  # "ensemble" for an ensemble
    task: str
    verbs: tuple[str, ...]
    version: str
    model_path: str  # "" for an ensemble (its members load their own)
    input_spec: InputSpec  # what the model takes (shape, dtype)
    config: dict[str, Any]  # the model's hyperparameters (the VAE's latent size, the LM's context)
    metrics: dict[str, float]  # the held-out metrics of the served version
    dataset: str | None
    limits: Limits
    tokenizer: dict[str, Any] | None = None  # language models
    groups: list[list[int]] | None = None  # split: stage index groups
    members: list[str] | None = None  # ensemble: model-store names; multiplex: the model ids
    batching: dict[str, Any] | None = None
    api_keys_env: str | None = None
    api_keys_file: str | None = None
    arms: tuple[Arm, ...] = ()  # a canary app's versions (traffic weights come as user_config)
    sticky_header: str | None = None  # canary: requests with this header keep their arm
    # Host names answered besides loopback ("*": any); None: loopback only without keys, any with keys
    allowed_hosts: tuple[str, ...] | None = None
    # a split app with a latency objective: its planner's board is read (serving/slo.py), and the
    # cheaper variant (its last handle) answers the share of requests the plan gives it
    slo: bool = False
    variant: Arm | None = None

    @classmethod
    def from_meta(
        cls,
        name: str,
        kind: str,
        version: StoreVersion,
        meta: CheckpointMeta,
        limits: Limits,
        explainable: bool = False,
        **rest: Any,
    ) -> IngressSpec:
        """The spec of one stored model version, from its model.json. `explainable`: the shape can
        run :explain (its backend has gradients), offered when the model can take them too."""
        task = meta.task or "classification"
        verbs = family_spec(meta.family).verbs
        if explainable and can_explain(meta, task, verbs):
            verbs = (*verbs, "explain")
        if "generate" in verbs:
            limits.check_generation(meta.config["context"])
        return cls(
            name=name,
            kind=kind,  # type: ignore[arg-type]
            family=meta.family,
            task=task,
            verbs=verbs,
            version=str(version.version),
            model_path=version.uri,
            input_spec=meta.input_spec,
            config=meta.config,
            metrics=meta.test_metrics,
            dataset=meta.dataset_name,
            limits=limits,
            tokenizer=meta.tokenizer,
            **rest,
        )

    @classmethod
    def of_many(
        cls, name: str, kind: str, first: CheckpointMeta, limits: Limits, members: list[str], **rest: Any
    ) -> IngressSpec:
        """The spec of an app over several models (an ensemble, a multiplexed app), from its first."""
        return cls(
            name=name,
            kind=kind,  # type: ignore[arg-type]
            family="ensemble" if kind == "ensemble" else first.family,
            task="classification" if kind == "ensemble" else first.task or "classification",
            verbs=("predict",),
            version="",
            model_path="",
            input_spec=first.input_spec,
            config={},
            metrics={},
            dataset=first.dataset_name,
            limits=limits,
            members=list(members),
            **rest,
        )
