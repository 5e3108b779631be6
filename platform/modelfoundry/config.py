"""Typed, frozen, validated configs (model, data, train) loaded from YAML, validated at the edge.

A job config is one YAML document:

    name: cnn-digits            # run name and model-store name
    model: {family: cnn, preset: default, dropout: 0.25}   # extra keys override model fields
    data: {dataset: digits, augment: true}
    train: {epochs: 30, num_workers: 2}

Every mistake (unknown field, wrong type, bad value) raises ConfigError (a ValueError) whose
message names the dotted path of the field and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelfoundry.config_flat import ConfigError, apply_overrides
from modelfoundry.models import REGISTRY, family_spec

# what each data.dataset delivers (a family lists the kinds it accepts in its FamilySpec)
DATASET_KINDS = {
    "digits": "image",
    "mnist": "image",
    "fashion-mnist": "image",
    "sunspots": "series",
    "parquet": "table",
    "pydocs": "text",
    "text": "text",
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSection(_Frozen):
    # a built-in family (mlp, cnn, rnn, vae, transformer), an installed one's entry-point name, or
    # package.module:ATTR naming a FamilySpec of one's own (models/external.py)
    family: str
    preset: str = "default"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _collect_params(cls, data: Any) -> Any:
        """Keys other than family/preset/params are model hyperparameters."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        params = dict(data.pop("params", None) or {})
        for key in list(data):
            if key not in ("family", "preset"):
                params[key] = data.pop(key)
        data["params"] = params
        return data

    @field_validator("family")
    @classmethod
    def _known_family(cls, family: str) -> str:
        family_spec(family)  # a ValueError that names the family and why
        return family

    @model_validator(mode="after")
    def _check_params(self) -> ModelSection:
        spec = family_spec(self.family)
        for key in self.params:
            if key in spec.data_fields:
                raise ValueError(f"{key} is set from the dataset; remove it from the model section")
            if key not in spec.fields:
                raise ValueError(f"unknown field {key!r} for family {self.family}; allowed: {spec.user_fields}")
        spec.build_config(self.preset, self.params)  # preset, type and range checks
        return self

    @property
    def spec(self):
        return family_spec(self.family)


class DataSection(_Frozen):
    dataset: Literal[tuple(DATASET_KINDS)] = "digits"  # type: ignore[valid-type]
    # IDX directory (fashion-mnist), Parquet file/URI (parquet), text or Parquet file/URI (text)
    path: str | None = None
    feature_columns: list[str] | None = None
    text_column: str | None = None  # dataset text from Parquet: the column holding the text
    label_column: str = "label"
    task: Literal["classification", "regression"] | None = None  # parquet only; inferred if unset
    input_shape: list[int] | None = None  # parquet only; default (number of features,)
    test_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    seed: int = 0
    # series: steps per input window (default 20); text: characters per training example
    # (default: the model's context)
    window: int | None = Field(default=None, ge=2)
    limit: int | None = Field(default=None, gt=0)  # cap on training examples (quick runs)
    augment: bool = False
    max_shift: int = Field(default=2, ge=0)  # pixels
    max_rotation: float = Field(default=10.0, ge=0.0, le=45.0)  # degrees
    # CPUs each augmentation task reserves. 0 shares the training workers' CPUs (needed when the
    # workers take every CPU, as on a laptop); on a cluster with spare CPUs set 1 or more.
    augment_cpus: float = Field(default=0.0, ge=0.0)
    # Each worker holds its shard as tensors (read once from Ray Data, reshuffled every epoch with a
    # seeded permutation) instead of streaming it every epoch. auto: yes unless augmentation is on
    # (it draws new samples each epoch, so it streams) or a worker's shard exceeds 2 GiB.
    in_memory: bool | Literal["auto"] = "auto"

    @model_validator(mode="after")
    def _check_source(self) -> DataSection:
        if self.in_memory is True and self.augment:
            raise ValueError("in_memory: true cannot hold augmented data (new samples every epoch); use auto or false")
        if self.dataset in ("parquet", "text") and not self.path:
            raise ValueError(f"dataset {self.dataset} needs path (a local file or a URI such as s3://...)")
        if self.dataset == "parquet":
            if not self.feature_columns:
                raise ValueError("dataset parquet needs feature_columns (the input column names)")
        elif self.feature_columns or self.input_shape or self.task:
            raise ValueError("feature_columns, input_shape and task apply to dataset parquet only")
        if self.text_column and self.dataset != "text":
            raise ValueError("text_column applies to dataset text (a Parquet file) only")
        if self.dataset in ("digits", "mnist", "sunspots", "pydocs") and self.path:
            raise ValueError(f"dataset {self.dataset} is built in and takes no path")
        return self


class WorkerRange(_Frozen):
    """Elastic training (Ray Train's num_workers=(min, max)): starts with at least `min` workers,
    grows to `max` as resources appear (checked every `resize_interval_s`), shrinks instead of
    failing; a resize resumes from the last checkpoint with the global batch kept (batch_per_worker)."""

    min: int = Field(gt=0)
    max: int = Field(gt=0)
    resize_interval_s: float = Field(default=60.0, gt=0.0)


class TrainSection(_Frozen):
    epochs: int = Field(default=10, gt=0)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=1e-3, gt=0.0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(default=0.0, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    lr_schedule: Literal["none", "cosine"] = "none"
    num_workers: int = Field(default=2, gt=0)
    workers: WorkerRange | None = None  # elastic instead of num_workers
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    # ddp: a full replica per worker; fsdp: parameters, gradients and optimizer state sharded over
    # the workers (PyTorch's fully_shard, sharded checkpoints), for models too big to replicate
    strategy: Literal["ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False  # recompute block activations in backward (less memory)
    seed: int = 0
    storage: str = "runs"  # local directory or a pyarrow filesystem URI (s3://, gs://)
    model_store: str = "models"  # local directory or URI; shared storage on a cluster
    keep_checkpoints: int = Field(default=2, gt=0)
    max_failures: int = Field(default=1, ge=0)
    worker_resources: dict[str, float] = Field(default_factory=dict)  # custom resources per worker
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    placement_timeout_s: float = Field(default=120.0, gt=0.0)
    # a failure loses at most this many optimizer steps (plus those taken while the last snapshot
    # was being written): rank 0 snapshots the training state every N steps from a background
    # thread, and a restarted run resumes at the step after the newest snapshot, on any world size
    checkpoint_every_steps: int | None = Field(default=None, gt=0)
    fail_at_epoch: int | None = Field(default=None, ge=1)  # fault injection: raise once at this epoch
    fail_at_step: int | None = Field(default=None, ge=1)  # fault injection: raise once after this many steps

    @field_validator("storage", "model_store")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a directory or a URI, not empty")
        return v

    @model_validator(mode="after")
    def _elastic(self) -> TrainSection:
        if self.workers and self.workers.max < self.workers.min:
            raise ValueError(f"workers: max ({self.workers.max}) must be at least min ({self.workers.min})")
        if self.workers and "num_workers" in self.model_fields_set:
            raise ValueError("set workers (elastic: {min, max}) or num_workers (fixed), not both")
        if self.workers and self.strategy == "fsdp":
            raise ValueError(
                "train.workers (elastic) needs strategy ddp: FSDP's sharded checkpoints are per world size"
            )
        if self.checkpoint_every_steps and self.strategy == "fsdp":
            raise ValueError("checkpoint_every_steps needs strategy ddp (an FSDP run checkpoints its shards per epoch)")
        if self.fail_at_step and not self.global_order:
            raise ValueError("fail_at_step counts the steps of one global order: set checkpoint_every_steps or workers")
        return self

    @property
    def global_order(self) -> bool:
        """Elastic runs and step snapshots: each step's examples from one order (training/global_order.py)."""
        return bool(self.workers or self.checkpoint_every_steps)

    @property
    def worker_bounds(self) -> tuple[int, int]:
        return (self.workers.min, self.workers.max) if self.workers else (self.num_workers, self.num_workers)

    @property
    def global_batch(self) -> int:
        """Examples per optimizer step at any world size: batch_size x the most workers."""
        return self.batch_size * self.worker_bounds[1]

    def batch_per_worker(self, world: int) -> int:
        """A constant global batch, shared by the workers there are."""
        return max(1, self.global_batch // world)


class JobConfig(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    model: ModelSection
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)

    @model_validator(mode="after")
    def _check_family_fits_data(self) -> JobConfig:
        spec, kind = self.model.spec, DATASET_KINDS[self.data.dataset]
        if kind not in spec.inputs:
            fits = sorted(d for d, k in DATASET_KINDS.items() if k in spec.inputs)
            families = sorted(n for n, s in REGISTRY.items() if kind in s.inputs)
            raise ValueError(
                f"family {self.model.family} does not learn from {kind} data (dataset {self.data.dataset}); "
                f"its datasets: {fits}; families for {self.data.dataset}: {families}"
            )
        if self.train.checkpoint_every_steps and (self.data.augment or self.data.in_memory is False):
            raise ValueError(
                "train.checkpoint_every_steps resumes at an example's index in the split held in memory; "
                "data.augment and data.in_memory: false stream it through Ray Data, which has no index"
            )
        if self.train.activation_checkpointing and not hasattr(spec.model, "set_activation_checkpointing"):
            raise ValueError(f"train.activation_checkpointing applies to block models (transformer), not {spec.name}")
        if kind == "text":
            context = spec.build_config(self.model.preset, self.model.params).context
            if self.data.window is None:  # frozen: set once here, while the config is being built
                object.__setattr__(self, "data", self.data.model_copy(update={"window": context}))
            elif self.data.window > context:
                raise ValueError(f"data.window {self.data.window} exceeds the model's context {context}")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        if d["train"]["workers"]:  # elastic: num_workers does not apply (and may not be set beside it)
            del d["train"]["num_workers"]
        params = d["model"].pop("params")
        d["model"].update(params)
        return d


def _format(err: ValidationError, source: str) -> ConfigError:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-")) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown field")
        elif isinstance(got, (str, int, float, bool)) or got is None:
            lines.append(f"{where}: {msg} (got {got!r})")
        else:
            lines.append(f"{where}: {msg}")
    return ConfigError(f"invalid config {source}:\n  " + "\n  ".join(lines))


def parse_config(data: dict[str, Any], source: str = "<dict>") -> JobConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        raise _format(err, source) from None


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """A YAML file's content; ConfigError naming the file when it is missing or not YAML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {str(path)!r} is not valid YAML: {err}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> JobConfig:
    """Read a YAML job config, apply dotted-path overrides (e.g. {"train.epochs": 3}), validate."""
    data = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return parse_config(data, str(path))


def with_overrides(config: JobConfig, overrides: dict[str, Any]) -> JobConfig:
    return parse_config(apply_overrides(config.to_dict(), overrides), f"{config.name} + overrides")


def dump_config(config: JobConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
