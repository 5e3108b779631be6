"""Feedforward network: classifier (output_dim = classes) or regressor (output_dim = 1)."""

from __future__ import annotations

import math

import torch
from torch import nn

from modelfoundry.models.common import Denormalize, Standardize, mlp_layers
from modelfoundry.models.spec import Activation, Dropout, FamilyConfig, FamilySpec, NonEmpty, PosInt


class MLPConfig(FamilyConfig):
    input_shape: NonEmpty[PosInt] = (1, 8, 8)
    output_dim: PosInt = 10
    hidden_sizes: NonEmpty[PosInt] = (256, 128)
    activation: Activation = "relu"
    dropout: Dropout = 0.1


PRESETS = {
    "tiny": {"hidden_sizes": (32,), "dropout": 0.0},
    "default": {"hidden_sizes": (256, 128), "dropout": 0.1},
}


class MLP(nn.Module):
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


SPEC = FamilySpec(
    "mlp",
    MLP,
    MLPConfig,
    PRESETS,
    inputs=frozenset({"image", "series", "table"}),
)
