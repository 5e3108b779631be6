"""Per-deployment settings from config: replicas or autoscaling, concurrency, batching, resources."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

AUTOSCALING_KEYS = {
    "min_replicas",
    "initial_replicas",
    "max_replicas",
    "target_ongoing_requests",
    "look_back_period_s",
    "metrics_interval_s",  # how often replicas push metrics (Serve: deprecated, still what it uses)
    "upscale_delay_s",
    "downscale_delay_s",
    "downscale_to_zero_delay_s",
    "upscaling_factor",
    "downscaling_factor",
    "upscale_smoothing_factor",
    "downscale_smoothing_factor",
    "aggregation_function",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchingOptions(Strict):
    """serving/batching.AdaptiveBatcher: up to max_batch_size requests per forward pass; a batch
    that already holds more than one request may wait up to batch_wait_timeout_s to fill (a lone
    request never waits)."""

    max_batch_size: int = Field(default=32, gt=0)
    batch_wait_timeout_s: float = Field(default=0.002, ge=0.0)


class DeploymentOptions(Strict):
    num_replicas: int = Field(default=1, gt=0)
    autoscaling_config: dict[str, Any] | None = None  # replaces num_replicas when set
    # Serve's default of 5 collapses under load (RAY260.md): a replica takes this many at once
    max_ongoing_requests: int = Field(default=64, gt=0)
    num_cpus: float = Field(default=0.25, ge=0.0)
    num_gpus: float = Field(default=0.0, ge=0.0)
    resources: dict[str, float] = Field(default_factory=dict)  # custom resources, e.g. a node label

    def model_post_init(self, _: Any) -> None:
        if self.autoscaling_config:
            unknown = set(self.autoscaling_config) - AUTOSCALING_KEYS
            if unknown:
                raise ValueError(
                    f"unknown autoscaling_config keys {sorted(unknown)}; allowed: {sorted(AUTOSCALING_KEYS)}"
                )

    def serve_options(self, extra_resources: dict[str, float] | None = None) -> dict[str, Any]:
        actor: dict[str, Any] = {"num_cpus": self.num_cpus}
        if self.num_gpus:
            actor["num_gpus"] = self.num_gpus
        resources = {**self.resources, **(extra_resources or {})}
        if resources:
            actor["resources"] = resources
        opts: dict[str, Any] = {"max_ongoing_requests": self.max_ongoing_requests, "ray_actor_options": actor}
        if self.autoscaling_config:
            opts["autoscaling_config"] = dict(self.autoscaling_config)
        else:
            opts["num_replicas"] = self.num_replicas
        return opts
