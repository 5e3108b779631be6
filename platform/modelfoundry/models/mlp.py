"""Feedforward network: classifier (output_dim = classes) or regressor (output_dim = 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from modelfoundry.models.common import (
    Denormalize,
    Standardize,
    check_dropout,
    check_positive,
    mlp_layers,
)


@dataclass(frozen=True)
class MLPConfig:
    input_shape: tuple[int, ...] = (1, 8, 8)
    output_dim: int = 10
    hidden_sizes: tuple[int, ...] = (256, 128)
    activation: Literal["relu", "gelu", "tanh", "silu"] = "relu"
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_positive("input_shape", self.input_shape)
        check_positive("output_dim", self.output_dim)
        check_positive("hidden_sizes", self.hidden_sizes)
        check_dropout(self.dropout)


PRESETS = {
    "tiny": {"hidden_sizes": (32,), "dropout": 0.0},
    "default": {"hidden_sizes": (256, 128), "dropout": 0.1},
}


class MLP(nn.Module):
    config_class = MLPConfig
    presets = PRESETS

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        self.input_norm = Standardize()
        self.output_norm = Standardize()  # stays 0/1 for classifiers; target scale for regression
        sizes = [math.prod(config.input_shape), *config.hidden_sizes]
        self.blocks = nn.ModuleList(
            nn.Sequential(*mlp_layers([a, b, 1], config.activation, config.dropout)[:-1])
            for a, b in zip(sizes[:-1], sizes[1:])
        )
        self.head = nn.Linear(sizes[-1], config.output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_norm(x).flatten(1)
        for block in self.blocks:
            h = block(h)
        return self.output_norm.inverse(self.head(h))

    def stages(self) -> list[nn.Module]:
        first = nn.Sequential(self.input_norm, nn.Flatten(1), self.blocks[0])
        return [first, *self.blocks[1:], nn.Sequential(self.head, Denormalize(self.output_norm))]
