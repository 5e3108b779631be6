"""Pieces shared by the model families: config validation, normalisation, activations."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def make_config(cls: type, preset: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """Build the frozen config dataclass `cls` from a preset plus user overrides.

    Unknown fields and wrong types raise ValueError naming the field and what is allowed.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values = dict(preset)
    for key, value in overrides.items():
        if key not in fields:
            raise ValueError(f"unknown field {key!r} for model config {cls.__name__}; allowed: {sorted(fields)}")
        values[key] = _coerce(key, value, hints[key])
    return cls(**values)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list of {item_type.__name__}, got {value!r}")
        return tuple(_coerce(name, v, item_type) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {hint} for {name}")


def check_positive(name: str, values: tuple[int, ...] | int) -> None:
    items = values if isinstance(values, tuple) else (values,)
    if not items or any(v <= 0 for v in items):
        raise ValueError(f"{name} must be positive (and non-empty), got {values!r}")


def check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")


class Standardize(nn.Module):
    """(x - mean) / std with scalar statistics stored as buffers, so they travel in the
    state_dict: the statistics come from the training split and serving needs no side file."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))

    def set(self, mean: float, std: float) -> None:
        self.mean.fill_(float(mean))
        self.std.fill_(max(float(std), 1e-8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


class Denormalize(nn.Module):
    """Maps outputs back to the target's units (identity for classifiers, whose stats stay 0/1)."""

    def __init__(self, norm: Standardize) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm.inverse(x)


def mlp_layers(sizes: list[int], activation: str, dropout: float) -> list[nn.Module]:
    """Linear-activation-dropout blocks between consecutive sizes (no activation after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return layers
