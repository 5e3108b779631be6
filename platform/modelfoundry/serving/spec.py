"""What the app builder hands the ingress replica: one typed, frozen object with only what the
ingress uses (not the whole model.json with its per-epoch history)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from modelfoundry.models import family_spec


@dataclass(frozen=True)
class Limits:
    max_instances: int
    max_body_bytes: int
    max_new_tokens: int  # language models: the most tokens one request may ask for


@dataclass(frozen=True)
class IngressSpec:
    name: str  # the route: /v1/models/<name>:<verb>
    kind: Literal["model", "split", "ensemble", "services", "multiplex"]
    family: str  # "ensemble" for an ensemble
    task: str
    verbs: tuple[str, ...]
    version: str
    model_path: str  # "" for an ensemble (its members load their own)
    input_spec: dict[str, Any]  # {"shape": [...], "dtype": ...}
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

    @classmethod
    def from_meta(cls, name: str, kind: str, path: str, meta: dict[str, Any], limits: Limits, **rest: Any):
        """The spec of one stored model version, from its model.json."""
        family = meta["family"]
        task = meta.get("task", "classification")
        return cls(
            name=name,
            kind=kind,  # type: ignore[arg-type]
            family=family,
            task=task,
            verbs=family_spec(family).verbs,
            version=path.rstrip("/").rsplit("/", 1)[-1] if path else "",
            model_path=path,
            input_spec=meta["input_spec"],
            config=meta["config"],
            metrics={k: v for k, v in meta.get("metrics", {}).items() if k.startswith("test_")},
            dataset=(meta.get("dataset") or {}).get("name"),
            limits=limits,
            tokenizer=(meta.get("dataset") or {}).get("tokenizer"),
            **rest,
        )
