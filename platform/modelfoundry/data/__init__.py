"""Dataset sources -> Ray Datasets of Arrow batches: columns `x` (float32 tensor of the input
shape) and `y` (int64 class id or float32 target). The test split never touches training;
augmentation runs in `map_batches` on the training split only."""

from __future__ import annotations

import numpy as np

from modelfoundry.config import DataSection
from modelfoundry.data.augment import Augment
from modelfoundry.data.sources import load_splits
from modelfoundry.data.splits import DatasetSpec, Splits

ROWS_PER_BLOCK = 4096


def to_dataset(x: np.ndarray, y: np.ndarray):
    """An in-memory Ray Dataset with a tensor column x and a scalar column y, in several blocks
    so that it shards across training workers."""
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    tables = [
        pa.table({"x": ArrowTensorArray.from_numpy(x[i : i + ROWS_PER_BLOCK]), "y": y[i : i + ROWS_PER_BLOCK]})
        for i in range(0, len(x), ROWS_PER_BLOCK)
    ]
    return ray.data.from_arrow(tables)


def ray_datasets(splits: Splits, cfg: DataSection) -> dict:
    """{"train": ..., "test": ...}; the train split is augmented (if configured) in map_batches."""
    train = to_dataset(splits.x_train, splits.y_train)
    if cfg.augment and splits.spec.kind == "image":
        train = train.map_batches(
            Augment(cfg.max_shift, cfg.max_rotation), batch_format="numpy", num_cpus=cfg.augment_cpus
        )
    return {"train": train, "test": to_dataset(splits.x_test, splits.y_test)}


__all__ = ["DatasetSpec", "Splits", "load_splits", "ray_datasets", "to_dataset"]
