"""Pieces shared by the model families: normalisation, activations, MLP layers."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


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
