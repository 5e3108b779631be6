"""What `serve run` / `serve deploy` YAML passes as an application's `args:`, typed per app shape:
one class per `kind` in a discriminated union (AppArgs), parsed in one place (parse_args).

  model      one stored model: run in the ingress, or `split` into stage services (a family with
             named services, the VAE's encoder and decoder, is served through them)
  vae        a model that must be a VAE (its encoder and decoder services)
  ensemble   several classifiers fanned out; probabilities averaged
  multiplex  many models of one family on shared replicas (Serve's model multiplexing)
  canary     versions of one model with traffic weights (changed live by `foundry rollout`)

An app without `kind` is a model app; a model app with `traffic` is a canary (the form earlier
configs used)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from modelfoundry.serving.generation import MAX_NEW_TOKENS
from modelfoundry.serving.options import BatchingOptions, DeploymentOptions, Strict
from modelfoundry.serving.slo import SloOptions
from modelfoundry.serving.spec import check_traffic

VersionRef = int | Annotated[str, Field(pattern=r"^(latest|@[A-Za-z][A-Za-z0-9_-]{0,31})$")]
HostName = Annotated[str, Field(pattern=r"^(\*|[A-Za-z0-9._:-]{1,253})$")]


class CommonArgs(Strict):
    """What every app shape takes: where models are, the route name, limits, keys, deployments."""

    store: str = "models"
    name: str | None = None  # the route name: /v1/models/<name>:<verb>
    batching: BatchingOptions | None = None
    max_instances: int = Field(default=256, gt=0)
    max_body_bytes: int = Field(default=1_000_000, gt=0)
    max_new_tokens: int = Field(default=MAX_NEW_TOKENS, gt=0)  # language models, per request
    # OIP v2: the largest reply, known from the outputs' shapes before the model runs (413 beyond)
    max_response_bytes: int = Field(default=8_000_000, gt=0)
    # language models (continuous batching, serving/continuous.py): the sequences one decode step
    # of a micro-batch carries; the KV positions its cache may hold (rows x the longest
    # reservation; unset: max_generations x the context); requests queued beyond the running
    # ones per ingress replica (429 + Retry-After beyond); a split app's micro-batches in flight
    # through its stages at once (unset: one per stage)
    max_generations: int = Field(default=64, gt=0)
    max_kv_tokens: int | None = Field(default=None, gt=0)
    max_queued_generations: int = Field(default=256, ge=0)
    micro_batches: int | None = Field(default=None, gt=0, le=16)
    # Host header names answered besides loopback ones ("*": any). Unset: loopback only when the app
    # has no API keys (a web page cannot reach it by DNS rebinding), any name when it has keys
    allowed_hosts: list[HostName] | None = None
    # API keys: the NAME of an env var (comma-separated keys) and/or a key file path; never keys
    api_keys_env: str | None = None
    api_keys_file: str | None = None
    ingress: DeploymentOptions = DeploymentOptions()
    stages: DeploymentOptions = DeploymentOptions()  # the stage / member / model deployments


class ModelArgs(CommonArgs):
    kind: Literal["model"] = "model"
    model: str  # a model-store name
    version: VersionRef = "latest"
    split: None | int | str | list[list[int]] = None  # None: monolithic; "auto", "auto:K", K or groups
    # split apps: custom resources per stage, in order, to place each stage on its own nodes
    # (e.g. [{zone_a: 0.01}, {zone_b: 0.01}] with nodes started with --resources)
    stage_placement: list[dict[str, float]] | None = None
    # split apps: per stage, a model-store entry (NAME or NAME:VERSION) whose stages replace the
    # model's there, e.g. [null, "cnn-digits-dynamic-int8"]: an int8 stage beside a float one. It
    # must be a compressed sibling with the same stage boundaries (same family and config).
    stage_models: list[str | None] | None = None
    # split apps: a latency objective for the whole graph; a planner sets every stage's replicas
    # (serving/slo.py). Deployed declaratively: its planner is the app's autoscaling policy
    slo: SloOptions | None = None
    # bench only: each stage call also holds its replica this long, one call at a time (a slower,
    # accelerator-bound model played on a small machine; docs/results.md states it by the figures)
    synthetic_ms: float = Field(default=0.0, ge=0, le=10_000)

    @model_validator(mode="after")
    def _check(self) -> ModelArgs:
        if self.stage_models is not None and self.split is None:
            raise ValueError("stage_models applies to a split model app (kind model with split)")
        if self.synthetic_ms and self.split is None:
            raise ValueError("synthetic_ms applies to a split model app (its stage services)")
        if self.slo is not None and self.split is None:
            raise ValueError("slo applies to a split model app (kind model with split): its stages are what it scales")
        return self


class VaeArgs(CommonArgs):
    kind: Literal["vae"]
    model: str
    version: VersionRef = "latest"


class EnsembleArgs(CommonArgs):
    kind: Literal["ensemble"]
    models: list[str]  # NAME or NAME:VERSION each; classifiers

    @model_validator(mode="after")
    def _check(self) -> EnsembleArgs:
        if len(self.models) < 2:
            raise ValueError("an ensemble needs models: a list of at least 2 model-store names")
        return self


class MultiplexArgs(CommonArgs):
    kind: Literal["multiplex"]
    models: list[str]  # NAME or NAME:VERSION each; the model ids
    max_models_per_replica: int = Field(default=3, gt=0)  # loaded at once per replica (LRU beyond)
    version: VersionRef = "latest"  # for the names given without a version

    @model_validator(mode="after")
    def _check(self) -> MultiplexArgs:
        if not self.models:
            raise ValueError("kind multiplex needs models: the model-store names (NAME or NAME:VERSION) it serves")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models lists a model twice: {self.models}")
        return self


class CanaryArgs(CommonArgs):
    kind: Literal["canary"]
    model: str
    # the versions this app serves and the percent of requests each gets, e.g. {champion: 90,
    # challenger: 10}; keys are aliases, version numbers or latest. The weights are the Ingress
    # deployment's user_config: `foundry rollout` changes them in place.
    traffic: dict[str, int]
    # a request header (a user or session id) whose value keeps a client on one version
    sticky_header: str | None = Field(default=None, pattern=r"^[A-Za-z0-9-]{1,64}$")
    # the store version behind each traffic key, pinned when the app was deployed (an alias may
    # move later; a rebuilt app must serve what it served). Resolved when absent.
    arm_versions: dict[str, int] | None = None

    @model_validator(mode="after")
    def _check(self) -> CanaryArgs:
        check_traffic(self.traffic)
        if self.arm_versions is not None and set(self.arm_versions) != set(self.traffic):
            raise ValueError(f"arm_versions names {sorted(self.arm_versions)}; traffic names {sorted(self.traffic)}")
        return self


AnyAppArgs = ModelArgs | VaeArgs | EnsembleArgs | MultiplexArgs | CanaryArgs
AppArgs = Annotated[AnyAppArgs, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[AnyAppArgs] = TypeAdapter(AppArgs)
KINDS = ("model", "vae", "ensemble", "multiplex", "canary")


def _normalise(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    kind = data.setdefault("kind", "model")
    if kind == "model" and "traffic" in data:  # the canary form of earlier configs
        if data.get("version", "latest") != "latest":
            raise ValueError("with traffic, name the versions in it (e.g. {champion: 90, '3': 10}), not in version")
        if data.get("split") is not None or data.get("stage_models") is not None:
            raise ValueError("traffic (a canary) applies to a monolithic model app (kind model, no split)")
        data.pop("version", None)
        data["kind"] = "canary"
    elif kind == "model" and ("sticky_header" in data or "arm_versions" in data):
        raise ValueError("sticky_header and arm_versions apply to a canary app (one with traffic)")
    return data


def parse_args(data: AnyAppArgs | dict[str, Any]) -> AnyAppArgs:
    """An app's args, validated into the class of its kind; a ValueError naming the field."""
    if isinstance(data, CommonArgs):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"app args must be a mapping, got {type(data).__name__}")
    data = _normalise(data)
    if data["kind"] not in KINDS:
        raise ValueError(f"kind {data['kind']!r} is not one of {list(KINDS)}")
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(str(p) for p in e["loc"][1:]) or "args"  # loc[0] is the kind's tag
        raise ValueError(f"{where}: {e['msg'].removeprefix('Value error, ')}") from None
