"""A temporal convolutional network (TCN: Bai, Kolter and Koltun, 2018), a kind of model the
platform does not ship, as a modelfoundry family written outside it.

The input is read as steps of features, as the built-in RNN reads it: a (20, 1) sunspot window is
20 steps of 1 value, an (1, 8, 8) digit 8 steps of 8 pixels. Stacked residual blocks of dilated
causal 1-D convolutions (dilation 1, 2, 4, ...) see the whole window; the head reads the last step.

What modelfoundry needs of a family, all of it here:
  - a pydantic config (a FamilyConfig subclass) with the fields the dataset sets
    (input_shape, output_dim) and presets "tiny" and "default";
  - an nn.Module built from that config, keeping it as `self.config`;
  - optionally `stages()`: the modules whose composition is `forward` (eval mode), where split
    serving may cut the model (without it the family serves monolithic only);
  - optionally `input_norm` / `output_norm` (Standardize): the platform sets them from the
    training split, so the checkpoint serves raw values;
  - one FamilySpec naming all of the above, which `model.family: tcnzoo.family:SPEC` (or the
    entry point `tcn`, see pyproject.toml) loads.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from modelfoundry.models import FamilyConfig, FamilySpec
from modelfoundry.models.common import Denormalize, Standardize
from modelfoundry.models.spec import Dropout, NonEmpty, PosInt


class TCNConfig(FamilyConfig):
    input_shape: NonEmpty[PosInt] = (20, 1)  # set from the dataset
    output_dim: PosInt = 1  # set from the dataset
    channels: PosInt = 32
    levels: PosInt = 3  # residual blocks; block i has dilation 2**i
    kernel_size: PosInt = 3
    dropout: Dropout = 0.0


PRESETS = {
    "tiny": {"channels": 16, "levels": 2},
    "default": {"channels": 32, "levels": 3},
}


class ToChannels(nn.Module):
    """(batch, ...input_shape) -> (batch, features, steps): the layout Conv1d takes."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.steps, self.features = math.prod(input_shape[:-1]), input_shape[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.steps, self.features).transpose(1, 2)


class CausalBlock(nn.Module):
    """Two dilated causal convolutions with a residual connection."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.pad = (kernel_size - 1) * dilation  # on the left only: no step sees the future
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, dilation=dilation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.conv1(nn.functional.pad(x, (self.pad, 0)))))
        h = self.drop(torch.relu(self.conv2(nn.functional.pad(h, (self.pad, 0)))))
        return torch.relu(x + h)


class LastStep(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, -1]


class TCN(nn.Module):
    def __init__(self, config: TCNConfig) -> None:
        super().__init__()
        self.config = config
        self.input_norm = Standardize()
        self.output_norm = Standardize()
        self.to_channels = ToChannels(config.input_shape)
        self.embed = nn.Conv1d(config.input_shape[-1], config.channels, 1)
        self.blocks = nn.ModuleList(
            CausalBlock(config.channels, config.kernel_size, 2**i, config.dropout) for i in range(config.levels)
        )
        self.head = nn.Sequential(LastStep(), nn.Linear(config.channels, config.output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(self.to_channels(self.input_norm(x)))
        for block in self.blocks:
            h = block(h)
        return self.output_norm.inverse(self.head(h))

    def stages(self) -> list[nn.Module]:
        """Input embedding, each residual block, the head: split serving may cut between any two."""
        return [
            nn.Sequential(self.input_norm, self.to_channels, self.embed),
            *self.blocks,
            nn.Sequential(self.head, Denormalize(self.output_norm)),
        ]


SPEC = FamilySpec(
    "tcn",
    TCN,
    TCNConfig,
    PRESETS,
    inputs=frozenset({"image", "series", "table"}),  # the dataset's task: classification or regression
)
