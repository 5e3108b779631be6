"""Recurrent network (LSTM or GRU) for sequence classification and one-step forecasting.

The input is read as steps of features: shape (..., features) with the leading dims flattened
into steps, so a (1, 28, 28) image is 28 steps of 28 pixels and a (20, 1) window 20 steps of 1.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import StrictBool
from torch import nn

from modelfoundry.models.common import Denormalize, Standardize
from modelfoundry.models.spec import Dropout, FamilyConfig, FamilySpec, NonEmpty, PosInt


class RNNConfig(FamilyConfig):
    input_shape: NonEmpty[PosInt] = (1, 28, 28)
    output_dim: PosInt = 10
    cell: Literal["lstm", "gru"] = "lstm"
    hidden_size: PosInt = 128
    num_layers: PosInt = 1
    bidirectional: StrictBool = False
    dropout: Dropout = 0.0


PRESETS = {
    "tiny": {"hidden_size": 32, "num_layers": 1},
    "default": {"hidden_size": 128, "num_layers": 1},
}


class SequenceEncoder(nn.Module):
    """Runs the recurrent layers and returns the last step's features (both directions)."""

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.steps = math.prod(config.input_shape[:-1])
        self.features = config.input_shape[-1]
        rnn_class = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = rnn_class(
            self.features,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.bidirectional = config.bidirectional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.reshape(x.shape[0], self.steps, self.features)
        out, _ = self.rnn(seq)
        if not self.bidirectional:
            return out[:, -1]
        half = out.shape[-1] // 2
        # forward direction ends at the last step, backward direction at the first
        return torch.cat([out[:, -1, :half], out[:, 0, half:]], dim=1)


class RNN(nn.Module):
    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        self.config = config
        self.input_norm = Standardize()
        self.output_norm = Standardize()
        self.encoder = SequenceEncoder(config)
        width = config.hidden_size * (2 if config.bidirectional else 1)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(width, config.output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_norm.inverse(self.head(self.encoder(self.input_norm(x))))

    def stages(self) -> list[nn.Module]:
        return [
            nn.Sequential(self.input_norm, self.encoder),
            nn.Sequential(self.head, Denormalize(self.output_norm)),
        ]


SPEC = FamilySpec(
    "rnn",
    RNN,
    RNNConfig,
    PRESETS,
    inputs=frozenset({"image", "series", "table"}),
)
