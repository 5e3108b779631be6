"""Where each Train worker's data comes from: Ray Data's stream, its own share of each split put in
the object store, or the whole split once (one global order, training/global_order.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from modelfoundry.config import JobConfig

IN_MEMORY_LIMIT_BYTES = 2 << 30


def holds_in_memory(cfg: JobConfig, splits) -> bool:
    """Whether workers hold their data as tensors (see DataSection.in_memory): each its shard, or
    the whole split where every step draws from one global order (TrainSection.global_order)."""
    if cfg.data.in_memory != "auto":
        return cfg.data.in_memory
    held = (splits.x_train.nbytes + splits.x_test.nbytes) / (1 if cfg.train.global_order else cfg.train.num_workers)
    fits = not cfg.data.augment and held <= IN_MEMORY_LIMIT_BYTES
    if cfg.train.checkpoint_every_steps and not fits:
        raise ValueError(
            f"train.checkpoint_every_steps holds the split in memory on every node: {held / 2**30:.1f} GiB "
            f"is over {IN_MEMORY_LIMIT_BYTES / 2**30:.0f} GiB (drop it: the run then resumes at epoch boundaries)"
        )
    return fits


def rank_shares(x: np.ndarray, y: np.ndarray, world: int, equal: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each rank's share of a split: every world-th example, as DistributedSampler deals them.
    `equal`: pad by wrapping around so that every rank gets the same number (as DistributedSampler
    does; else DDP's ranks would run different numbers of steps and the longer one would wait
    forever in its all-reduce)."""
    index = np.arange(len(x))
    if equal and len(x) % world:
        index = np.resize(index, -(-len(x) // world) * world)  # wraps around: 0, 1, ... n-1, 0, ...
    for r in range(world):  # one share at a time (fancy indexing copies)
        yield x[index[r::world]], y[index[r::world]]


def with_shares(plan, cfg: JobConfig, splits):
    """The data put in the object store once, each worker fetching only what it uses (no Ray Data
    pipeline, coordinator or stats actors beside the training): each rank's share, or the whole
    split once where every step draws from one global order (the same at any world size)."""
    import ray

    if cfg.train.global_order:
        shares = {
            "train": [(ray.put(splits.x_train), ray.put(splits.y_train))],
            "test": [(ray.put(splits.x_test), ray.put(splits.y_test))],
        }
        return dataclasses.replace(plan, shares=shares)
    n = cfg.train.num_workers
    return dataclasses.replace(
        plan,
        shares={
            "train": [tuple(map(ray.put, s)) for s in rank_shares(splits.x_train, splits.y_train, n, equal=True)],
            "test": [tuple(map(ray.put, s)) for s in rank_shares(splits.x_test, splits.y_test, n, equal=False)],
        },
    )
