"""Compression configs (jobs/configs/compress_*.yaml), validated before any Ray work:

method: quantize | prune | distill
name: mlp-digits-int8            # model-store name of the result (default: <parent>-<suffix>)
quantize: {scheme: dynamic-int8, calibration_samples: 512}
prune: {ratio: 0.5, finetune: true}
distill:
  student: {family: mlp, preset: tiny, hidden_sizes: [64]}   # any family / preset / fields
  temperature: 4.0
  alpha: 0.7                     # weight of the soft-target loss; 1 - alpha on the labels
  transfer: {vae: vae-digits, samples: 2000}   # optional: VAE-synthesised inputs, teacher-labelled
train: {epochs: 5, lr: 0.0005, num_workers: 2}   # fine-tuning (prune) or the student's training
measure: {rounds: 30}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from modelfoundry.compression.quantize import SCHEMES, Scheme
from modelfoundry.config import ConfigError, ModelSection, TrainSection, _format, apply_overrides, read_yaml

METHODS = ("quantize", "prune", "distill")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class QuantizeSection(_Strict):
    scheme: Scheme = "dynamic-int8"
    calibration_samples: int = Field(default=512, gt=0, le=100_000)  # static-int8: training inputs observed


class PruneSection(_Strict):
    ratio: float = Field(gt=0.0, lt=1.0)  # share of each prunable width removed
    finetune: bool = True  # fine-tune the pruned model (train: section) on Ray Train


class TransferSection(_Strict):
    vae: str  # a VAE in the model store (NAME or NAME:VERSION) whose decoder synthesises inputs
    samples: int = Field(default=2000, gt=0, le=1_000_000)
    seed: int = 0


class DistillSection(_Strict):
    student: ModelSection
    temperature: float = Field(default=4.0, gt=0.0, le=100.0)
    alpha: float = Field(default=0.7, ge=0.0, le=1.0)
    transfer: TransferSection | None = None


class MeasureSection(_Strict):
    rounds: int = Field(default=30, gt=0, le=10_000)  # latency rounds (each: 10 calls of each model)
    batch_sizes: list[int] = Field(default=[1, 64], min_length=1)


class CompressConfig(_Strict):
    method: Literal["quantize", "prune", "distill"]
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    quantize: QuantizeSection | None = None
    prune: PruneSection | None = None
    distill: DistillSection | None = None
    train: TrainSection = Field(default_factory=lambda: TrainSection(epochs=3, lr=5e-4))
    measure: MeasureSection = Field(default_factory=MeasureSection)

    @model_validator(mode="before")
    @classmethod
    def _method_known(cls, data: Any) -> Any:
        if isinstance(data, dict) and "method" in data and data["method"] not in METHODS:
            raise ValueError(f"unknown method {data['method']!r}; choose one of {list(METHODS)}")
        return data

    @model_validator(mode="after")
    def _section_of_method(self) -> CompressConfig:
        sections = {"quantize": self.quantize, "prune": self.prune, "distill": self.distill}
        if self.method == "quantize" and self.quantize is None:
            object.__setattr__(self, "quantize", QuantizeSection())
        if self.method in ("prune", "distill") and sections[self.method] is None:
            raise ValueError(f"method {self.method} needs a {self.method}: section")
        others = [k for k, v in sections.items() if v is not None and k != self.method]
        if others:
            raise ValueError(f"method {self.method} takes no {', '.join(others)}: section (one method per run)")
        return self

    def output_name(self, parent: str) -> str:
        if self.name:
            return self.name
        suffix = {
            "quantize": self.quantize.scheme if self.quantize else "int8",
            "prune": f"pruned{round(100 * self.prune.ratio) if self.prune else 0}",
            "distill": "distilled",
        }[self.method]
        return f"{parent}-{suffix}"[:64]

    def summary(self) -> dict[str, Any]:
        section = getattr(self, self.method)
        return section.model_dump(mode="json") if section is not None else {}


def parse_compress(data: Any, source: str = "<dict>") -> CompressConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid compression config {source}: expected a mapping, got {type(data).__name__}")
    try:
        return CompressConfig.model_validate(data)
    except ValidationError as err:
        raise _format(err, source) from None


def load_compress(path: str | Path, overrides: dict[str, Any] | None = None) -> CompressConfig:
    data = read_yaml(path, "compression config")
    if overrides:
        data = apply_overrides(data, overrides)
    return parse_compress(data, str(path))


__all__ = ["CompressConfig", "SCHEMES", "load_compress", "parse_compress"]
