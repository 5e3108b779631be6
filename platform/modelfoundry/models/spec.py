"""What a model family is, in one place: `FamilySpec` (its class, typed config and presets,
the input kinds it accepts, its task, the config fields the dataset sets, its serving verbs)
and `FamilyConfig`, the base of every family's pydantic config.

Everything else (the job config's `model:` section, the family/dataset compatibility check, the
task and its metric, the verb table of the serving ingress) is derived from the registry in
`models/__init__.py`, so a new family is one module plus one registry entry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError
from torch import nn

# the kinds of input a dataset delivers (data.splits.DatasetSpec.kind)
InputKind = Literal["image", "series", "table", "text"]
# what a model learns; each has its loss, metrics and ranking metric in tasks.py
Task = Literal["classification", "regression", "generative", "language-model"]

T = TypeVar("T")
PosInt = Annotated[StrictInt, Field(gt=0)]
NonEmpty = Annotated[tuple[T, ...], Field(min_length=1)]  # a non-empty list, held as a tuple
Dropout = Annotated[StrictFloat, Field(ge=0.0, lt=1.0)]
Activation = Literal["relu", "gelu", "tanh", "silu"]


class FamilyConfig(BaseModel):
    """A family's hyperparameters: frozen, no unknown fields, no type coercion beyond int ->
    float and list -> tuple (what YAML and JSON give), finite numbers only."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    input_dtype: ClassVar[str] = "float32"  # what the model's forward takes; every config also
    # has an `input_shape` (a field, or for the language model a property: its context length)


def config_error(family: str, err: ValidationError) -> ValueError:
    """A pydantic error as one ValueError naming each bad field, what is allowed and what came."""
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or family
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"unknown field {where!r}")
        elif e["type"] != "value_error" and isinstance(e.get("input"), (str, int, float, bool, list, tuple)):
            lines.append(f"{where}: {msg} (got {e['input']!r})")
        else:
            lines.append(f"{where}: {msg}" if e["loc"] else msg)
    return ValueError(f"invalid {family} config: " + "; ".join(lines))


def from_dataset_default(spec: Any) -> dict[str, Any]:
    """The fields a classifier/regressor takes from its dataset: input shape and output size."""
    return {"input_shape": tuple(spec.input_shape), "output_dim": spec.output_dim}


@dataclass(frozen=True)
class FamilySpec:
    name: str
    model: type[nn.Module]
    config: type[FamilyConfig]
    presets: dict[str, dict[str, Any]]  # preset name -> field values over the config's defaults
    inputs: frozenset[str]  # input kinds (InputKind) the family can learn from
    task: Task | None = None  # None: the dataset's own task (classification or regression)
    verbs: tuple[str, ...] = ("predict",)  # the serving verbs: POST /v1/models/NAME:VERB
    # config fields the dataset sets (a user may not set them in the model: section)
    data_fields: tuple[str, ...] = ("input_shape", "output_dim")
    from_dataset: Callable[[Any], dict[str, Any]] = from_dataset_default
    # serving: named stage groups the ingress calls by verb (the VAE's encoder and decoder);
    # None: the ingress runs the model (or its split stages) as one function
    services: tuple[tuple[str, tuple[int, ...]], ...] | None = None

    def build_config(self, preset: str, overrides: dict[str, Any]) -> FamilyConfig:
        if preset not in self.presets:
            raise ValueError(f"unknown preset {preset!r} for {self.name}; choose one of {list(self.presets)}")
        try:
            return self.config.model_validate({**self.presets[preset], **overrides})
        except ValidationError as err:
            raise config_error(self.name, err) from None

    def task_for(self, dataset_task: str) -> Task:
        return self.task or dataset_task  # type: ignore[return-value]

    @property
    def fields(self) -> list[str]:
        return list(self.config.model_fields)

    @property
    def user_fields(self) -> list[str]:
        return [f for f in self.fields if f not in self.data_fields]
