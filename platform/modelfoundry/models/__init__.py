"""The model families, pure PyTorch (no Ray import anywhere under models/), and their registry:
one `FamilySpec` per family (models/spec.py). A built-in family is one module plus one entry here;
a family of one's own needs no edit to the platform (models/external.py): `model.family` names it
as `package.module:ATTR`, or by the name an installed package registers in the entry-point group
`modelfoundry.families`."""

from __future__ import annotations

from typing import Any

from torch import nn

from modelfoundry.models import cnn, external, mlp, rnn, transformer, vae
from modelfoundry.models.spec import FamilyConfig, FamilySpec, InputKind, Task

REGISTRY: dict[str, FamilySpec] = {m.SPEC.name: m.SPEC for m in (mlp, cnn, rnn, vae, transformer)}
FAMILIES: dict[str, type[nn.Module]] = {name: spec.model for name, spec in REGISTRY.items()}
# every family has these two; some have more (family_spec(name).presets)
PRESETS = ("tiny", "default")


def family_spec(family: str) -> FamilySpec:
    """The FamilySpec `family` names: a built-in name, an entry-point name or package.module:ATTR."""
    if family in REGISTRY:
        return REGISTRY[family]
    return external.load(family, sorted(REGISTRY))


def model_config(family: str, preset: str = "default", **overrides: Any) -> FamilyConfig:
    """The validated, frozen config of `family` at `preset` with `overrides` applied."""
    return family_spec(family).build_config(preset, overrides)


def build_model(family: str, preset: str = "default", **overrides: Any) -> nn.Module:
    """Build a model of `family` at `preset`, with config fields overridden by `overrides`."""
    spec = family_spec(family)
    model = spec.model(spec.build_config(preset, overrides))
    model.family_reference = family  # what family_of records: the name it was built by
    return model


def config_dict(model: nn.Module) -> dict[str, Any]:
    """The model's hyperparameters as plain JSON-able values (tuples become lists)."""
    return model.config.model_dump(mode="json")


def family_of(model: nn.Module) -> str:
    """The name a checkpoint records for `model`'s family (the reference that loads it again)."""
    if isinstance(getattr(model, "family_reference", None), str):
        return model.family_reference
    known = [*external.loaded().items(), *REGISTRY.items()]  # a user's subclass of a built-in is the user's
    for check in (lambda m, c: type(m) is c, isinstance):  # isinstance: FSDP's fully_shard subclasses it
        for name, spec in known:
            if check(model, spec.model):
                return name
    raise ValueError(
        f"{type(model).__name__} is not a model of a known family ({sorted(REGISTRY)} or one loaded "
        "as package.module:ATTR)"
    )


def input_spec(model: nn.Module) -> dict[str, Any]:
    """What the model's forward takes: {"shape": [...], "dtype": "float32" | "int64"}."""
    return {"shape": list(model.config.input_shape), "dtype": model.config.input_dtype}


def set_normalization(model: nn.Module, stats: dict[str, float]) -> None:
    """Store the training split's statistics in the model's buffers (input standardisation, and
    the target scale of regressors), so the checkpoint alone is enough to serve."""
    if hasattr(model, "input_norm"):
        model.input_norm.set(stats["x_mean"], stats["x_std"])
    if hasattr(model, "output_norm"):
        model.output_norm.set(stats["y_mean"], stats["y_std"])


__all__ = [
    "FAMILIES",
    "PRESETS",
    "REGISTRY",
    "FamilyConfig",
    "FamilySpec",
    "InputKind",
    "Task",
    "build_model",
    "config_dict",
    "family_of",
    "family_spec",
    "input_spec",
    "model_config",
    "set_normalization",
]
