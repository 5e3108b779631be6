"""The four model families, pure PyTorch (no Ray import anywhere under models/)."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from modelfoundry.models.cnn import CNN
from modelfoundry.models.common import make_config
from modelfoundry.models.mlp import MLP
from modelfoundry.models.rnn import RNN
from modelfoundry.models.vae import VAE

FAMILIES: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "rnn": RNN, "vae": VAE}
PRESETS = ("tiny", "default")


def model_config(family: str, preset: str = "default", **overrides: Any) -> Any:
    """The validated, frozen config of `family` at `preset` with `overrides` applied."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(FAMILIES)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} for {family}; choose one of {list(PRESETS)}")
    cls = FAMILIES[family]
    return make_config(cls.config_class, cls.presets[preset], overrides)


def build_model(family: str, preset: str = "default", **overrides: Any) -> nn.Module:
    """Build a model of `family` at `preset`, with config fields overridden by `overrides`."""
    config = model_config(family, preset, **overrides)
    return FAMILIES[family](config)


def config_fields(family: str) -> list[str]:
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(FAMILIES)}")
    return [f.name for f in dataclasses.fields(FAMILIES[family].config_class)]


def config_dict(model: nn.Module) -> dict[str, Any]:
    """The model's hyperparameters as plain JSON-able values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(model.config).items()}


def family_of(model: nn.Module) -> str:
    for name, cls in FAMILIES.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not one of the model families {sorted(FAMILIES)}")


def set_normalization(model: nn.Module, stats: dict[str, float]) -> None:
    """Store the training split's statistics in the model's buffers (input standardisation, and
    the target scale of regressors), so the checkpoint alone is enough to serve."""
    if hasattr(model, "input_norm"):
        model.input_norm.set(stats["x_mean"], stats["x_std"])
    if hasattr(model, "output_norm"):
        model.output_norm.set(stats["y_mean"], stats["y_std"])
