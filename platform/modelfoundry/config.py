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

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelfoundry.models import FAMILIES, PRESETS, config_fields, model_config

DATA_FIELDS_SET_BY_DATASET = ("input_shape", "output_dim")


class ConfigError(ValueError):
    """A user mistake in a config: the message names the field and what is allowed."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSection(_Frozen):
    family: Literal["mlp", "cnn", "rnn", "vae"]
    preset: Literal["tiny", "default"] = "default"
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

    @model_validator(mode="after")
    def _check_params(self) -> ModelSection:
        for key in self.params:
            if key in DATA_FIELDS_SET_BY_DATASET:
                raise ValueError(f"{key} is set from the dataset; remove it from the model section")
            if key not in config_fields(self.family):
                allowed = [f for f in config_fields(self.family) if f not in DATA_FIELDS_SET_BY_DATASET]
                raise ValueError(f"unknown field {key!r} for family {self.family}; allowed: {allowed}")
        model_config(self.family, self.preset, **self.params)  # type and range checks
        return self


class DataSection(_Frozen):
    dataset: Literal["digits", "mnist", "fashion-mnist", "sunspots", "parquet"] = "digits"
    path: str | None = None  # IDX directory (fashion-mnist) or Parquet file/URI (parquet)
    feature_columns: list[str] | None = None
    label_column: str = "label"
    task: Literal["classification", "regression"] | None = None  # parquet only; inferred if unset
    input_shape: list[int] | None = None  # parquet only; default (number of features,)
    test_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    seed: int = 0
    window: int = Field(default=20, ge=2)  # series datasets: steps per input window
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
        if self.dataset == "parquet":
            if not self.path:
                raise ValueError("dataset parquet needs path (a local file or a URI such as s3://...)")
            if not self.feature_columns:
                raise ValueError("dataset parquet needs feature_columns (the input column names)")
        elif self.feature_columns or self.input_shape or self.task:
            raise ValueError("feature_columns, input_shape and task apply to dataset parquet only")
        if self.dataset in ("digits", "mnist", "sunspots") and self.path:
            raise ValueError(f"dataset {self.dataset} is built in and takes no path")
        return self


class TrainSection(_Frozen):
    epochs: int = Field(default=10, gt=0)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=1e-3, gt=0.0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(default=0.0, ge=0.0)
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    lr_schedule: Literal["none", "cosine"] = "none"
    num_workers: int = Field(default=2, gt=0)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0.0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    seed: int = 0
    storage: str = "runs"  # local directory or a pyarrow filesystem URI (s3://, gs://)
    model_store: str = "models"  # local directory or URI; shared storage on a cluster
    keep_checkpoints: int = Field(default=2, gt=0)
    max_failures: int = Field(default=1, ge=0)
    worker_resources: dict[str, float] = Field(default_factory=dict)  # custom resources per worker
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    placement_timeout_s: float = Field(default=120.0, gt=0.0)
    fail_at_epoch: int | None = Field(default=None, ge=1)  # fault injection: raise once at this epoch

    @field_validator("storage", "model_store")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a directory or a URI, not empty")
        return v


class JobConfig(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    model: ModelSection
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)

    @model_validator(mode="after")
    def _check_family_fits_data(self) -> JobConfig:
        if self.model.family == "vae" and self.data.dataset not in ("digits", "mnist", "fashion-mnist"):
            raise ValueError(
                f"family vae needs an image dataset (digits, mnist, fashion-mnist), not {self.data.dataset}"
            )
        if self.model.family == "cnn" and self.data.dataset == "sunspots":
            raise ValueError("family cnn needs images; use rnn or mlp for sunspots")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
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


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `data` with each dotted path set, e.g. "model.dropout" or "train.lr"."""
    out = copy.deepcopy(data) if isinstance(data, dict) else data
    for dotted, value in overrides.items():
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", dotted):
            raise ConfigError(f"override path {dotted!r} must be dotted, like train.lr or model.dropout")
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override path {dotted!r}: {key} is not a section")
        node[leaf] = value
    return out


def with_overrides(config: JobConfig, overrides: dict[str, Any]) -> JobConfig:
    return parse_config(apply_overrides(config.to_dict(), overrides), f"{config.name} + overrides")


def dump_config(config: JobConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


__all__ = [
    "FAMILIES",
    "PRESETS",
    "ConfigError",
    "JobConfig",
    "ModelSection",
    "DataSection",
    "TrainSection",
    "load_config",
    "parse_config",
    "apply_overrides",
    "with_overrides",
    "dump_config",
]
