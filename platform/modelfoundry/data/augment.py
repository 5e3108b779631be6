"""Image augmentation for the training split: small random shifts and rotations (numpy/scipy)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def augment_images(x: np.ndarray, max_shift: int, max_rotation: float, rng: np.random.Generator) -> np.ndarray:
    """Randomly rotate (+-max_rotation degrees) and shift (+-max_shift pixels) each (C, H, W) image."""
    out = np.empty_like(x)
    for i, img in enumerate(x):
        angle = rng.uniform(-max_rotation, max_rotation) if max_rotation > 0 else 0.0
        dy, dx = rng.integers(-max_shift, max_shift + 1, size=2) if max_shift > 0 else (0, 0)
        moved = img
        if angle:
            moved = ndimage.rotate(moved, angle, axes=(1, 2), reshape=False, order=1, mode="constant")
        if dy or dx:
            moved = ndimage.shift(moved, (0, dy, dx), order=0, mode="constant")
        out[i] = moved
    return np.clip(out, 0.0, 1.0)


class Augment:
    """A map_batches callable; a fresh random state per batch so every epoch sees new variants."""

    def __init__(self, max_shift: int, max_rotation: float) -> None:
        self.max_shift, self.max_rotation = max_shift, max_rotation

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rng = np.random.default_rng()
        return {**batch, "x": augment_images(batch["x"], self.max_shift, self.max_rotation, rng)}
