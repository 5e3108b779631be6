"""Convolutional classifier for 1-channel (or C-channel) images of any size.

Each conv block is Conv(k, same padding) -> ReLU -> MaxPool(2) while the image is still at least
2 pixels wide, so the seed's Conv(32)-Pool-Conv(64)-Pool-Dense(128)-Dense(10) is the default.
"""

from __future__ import annotations

import torch
from pydantic import StrictBool, field_validator
from torch import nn

from modelfoundry.models.common import Standardize
from modelfoundry.models.spec import Dropout, FamilyConfig, FamilySpec, NonEmpty, PosInt


class CNNConfig(FamilyConfig):
    input_shape: NonEmpty[PosInt] = (1, 28, 28)
    output_dim: PosInt = 10
    channels: NonEmpty[PosInt] = (32, 64)
    kernel_size: PosInt = 3
    hidden: PosInt = 128
    dropout: Dropout = 0.25
    batch_norm: StrictBool = False

    @field_validator("input_shape")
    @classmethod
    def _three_dims(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) != 3:
            raise ValueError(f"cnn input_shape must be (channels, height, width), got {list(v)}")
        return v

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 != 1:
            raise ValueError(f"kernel_size must be a positive odd integer, got {v}")
        return v


PRESETS = {
    "tiny": {"channels": (8, 16), "hidden": 32, "dropout": 0.0},
    "default": {"channels": (32, 64), "hidden": 128, "dropout": 0.25},
}


class CNN(nn.Module):
    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        self.config = config
        self.input_norm = Standardize()
        c, h, w = config.input_shape
        blocks = []
        for out in config.channels:
            layers: list[nn.Module] = [nn.Conv2d(c, out, config.kernel_size, padding=config.kernel_size // 2)]
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            blocks.append(nn.Sequential(*layers))
            c = out
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Sequential(
            nn.Flatten(1),
            nn.Dropout(config.dropout),
            nn.Linear(c * h * w, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.output_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.input_norm(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)

    def stages(self) -> list[nn.Module]:
        return [nn.Sequential(self.input_norm, self.blocks[0]), *self.blocks[1:], self.head]


SPEC = FamilySpec(
    "cnn",
    CNN,
    CNNConfig,
    PRESETS,
    inputs=frozenset({"image", "table"}),  # a table whose data.input_shape is (C, H, W)
)
