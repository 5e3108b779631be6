"""model.json as a typed, frozen value: `CheckpointMeta`. Every module reads a checkpoint's
metadata through it (never as a bare dict), and it is the one place that parses and writes it."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT_VERSION = 1
META_FILE = "model.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, corrupt or tampered with."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSpec(_Frozen):
    """What the model's forward takes."""

    shape: tuple[int, ...]
    dtype: Literal["float32", "int64"] = "float32"


class Quantization(_Frozen):
    """How the weights in model.pt are encoded (a weight codec's name, store/codecs.py)."""

    model_config = ConfigDict(frozen=True, extra="allow")
    scheme: str


class CheckpointMeta(BaseModel):
    """model.json. Known fields are typed; fields written by later versions or by a caller's
    `extra_meta` (a Pareto member's objectives) are kept as they are (`extra="allow"`)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    format_version: int = FORMAT_VERSION
    family: str  # a built-in family name, an entry-point name or package.module:ATTR
    config: dict[str, Any]  # the family's hyperparameters (its FamilyConfig, as JSON)
    input_spec: InputSpec
    sha256: str | None  # of model.pt; None only in the refused pre-round-2 FSDP layout
    task: str | None = None
    dataset: dict[str, Any] = Field(default_factory=dict)  # name, split seed, tokenizer, ...
    metrics: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)  # library versions when written
    created: str | None = None
    quantization: Quantization | None = None
    sharded: dict[str, str] | None = None  # FSDP training checkpoints: shard file -> sha256
    state_sha256: str | None = None  # training checkpoints: state.pt's sha256
    compression: dict[str, Any] | None = None  # method, parameters, parent, measures
    lineage: dict[str, Any] | None = None  # what a store version came from
    run: str | None = None
    epoch: int | None = None
    workers: int | None = None
    strategy: Literal["ddp", "fsdp"] | None = None
    history: list[dict[str, Any]] | None = None

    # ---- what readers ask of it
    @property
    def dataset_name(self) -> str | None:
        return self.dataset.get("name")

    @property
    def tokenizer(self) -> dict[str, Any] | None:
        return self.dataset.get("tokenizer")

    @property
    def codec(self) -> str:
        """The weight codec that reads model.pt (store/codecs.py)."""
        return self.quantization.scheme if self.quantization else "fp32"

    @property
    def test_metrics(self) -> dict[str, float]:
        return {k: v for k, v in self.metrics.items() if k.startswith("test_")}

    def updated(self, **fields: Any) -> CheckpointMeta:
        """A copy with `fields` replaced, validated again."""
        return CheckpointMeta.model_validate({**self.to_dict(), **fields})

    def published(self) -> CheckpointMeta:
        """As the store publishes a training checkpoint: the weights only (no shards, no optimizer
        state, no per-epoch history)."""
        data = self.to_dict()
        for key in ("sharded", "state_sha256"):
            data.pop(key, None)
        return CheckpointMeta.model_validate(data)

    # ---- model.json in and out
    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def parse(cls, data: bytes | str, where: str) -> CheckpointMeta:
        """model.json's text -> CheckpointMeta; a CheckpointError naming `where` and the field."""
        try:
            raw = json.loads(data)
        except ValueError as err:
            raise CheckpointError(f"{where} is not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{where} is not a model.json (a JSON object)")
        for key in ("family", "config", "sha256", "input_spec"):
            if key not in raw:
                raise CheckpointError(f"{where} lacks the field {key!r}")
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise CheckpointError(f"{where} is not a valid model.json: {bad}") from None
