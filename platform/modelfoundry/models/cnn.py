"""Convolutional classifier for 1-channel (or C-channel) images of any size.

Each conv block is Conv(k, same padding) -> ReLU -> MaxPool(2) while the image is still at least
2 pixels wide, so the seed's Conv(32)-Pool-Conv(64)-Pool-Dense(128)-Dense(10) is the default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modelfoundry.models.common import Standardize, check_dropout, check_positive


@dataclass(frozen=True)
class CNNConfig:
    input_shape: tuple[int, ...] = (1, 28, 28)
    output_dim: int = 10
    channels: tuple[int, ...] = (32, 64)
    kernel_size: int = 3
    hidden: int = 128
    dropout: float = 0.25
    batch_norm: bool = False

    def __post_init__(self) -> None:
        if len(self.input_shape) != 3:
            raise ValueError(f"cnn input_shape must be (channels, height, width), got {self.input_shape}")
        check_positive("input_shape", self.input_shape)
        check_positive("output_dim", self.output_dim)
        check_positive("channels", self.channels)
        check_positive("hidden", self.hidden)
        if self.kernel_size % 2 != 1 or self.kernel_size <= 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {self.kernel_size}")
        check_dropout(self.dropout)


PRESETS = {
    "tiny": {"channels": (8, 16), "hidden": 32, "dropout": 0.0},
    "default": {"channels": (32, 64), "hidden": 128, "dropout": 0.25},
}


class CNN(nn.Module):
    config_class = CNNConfig
    presets = PRESETS

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
