"""Every step's examples from one order over the whole split, whatever the world size.

Elastic runs and step snapshots need a step to mean the same examples on 1 worker as on 4: a
seeded permutation of the whole training split per epoch, cut into global batches of
`batch_size x max workers`; at step s each of the W workers takes its part (one of W near-equal
slices) of global batch s. A run resumed at step s of epoch e on any number of workers goes on
with exactly the examples a run that never stopped would have seen (the dropout draws too: the
generator is seeded per step). The split sits once per node in Ray's object store; workers read
it in place (no copy) on CPU, or copy it to their GPU once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import ray
import torch


def _tensor(array, device: torch.device) -> torch.Tensor:
    with warnings.catch_warnings():  # the object store's buffers are read-only; we only read them
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(array)
    return t.to(device) if device.type != "cpu" else t


class GlobalShard:
    """One split for all ranks; this rank's rows of each global batch (see the module doc)."""

    def __init__(self, refs, rank: int, world: int, device: torch.device, global_batch: int) -> None:
        x, y = ray.get(list(refs))
        self.x, self.y = _tensor(x, device), _tensor(y, device)
        self.rank, self.world, self.device, self.global_batch = rank, world, device, global_batch

    def steps_per_epoch(self) -> int:
        """Global batches per epoch; a last partial one is kept when every rank gets a row of it."""
        n, g = len(self.x), self.global_batch
        full, rest = divmod(n, g)
        return full + (1 if rest >= self.world else 0)

    def batches(self, epoch: int, seed: int, start: int = 0) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """(step, batch) for steps start+1.. of `epoch`; step s holds this rank's part of global batch s."""
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        g = self.global_batch
        for step in range(start + 1, self.steps_per_epoch() + 1):
            part = order[(step - 1) * g : step * g].tensor_split(self.world)[self.rank]
            torch.manual_seed(hash((seed, epoch, step, self.rank)) & 0x7FFF_FFFF)  # dropout: per step
            yield step, self._rows(part)

    def eval_batches(self, batch_size: int = 512) -> Iterator[dict[str, torch.Tensor]]:
        """This rank's slice of the split (each rank a different one; the sums are all-reduced)."""
        mine = torch.arange(len(self.x)).tensor_split(self.world)[self.rank]
        for i in range(0, len(mine), batch_size):
            yield self._rows(mine[i : i + batch_size])

    def _rows(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        index = index.to(self.x.device)
        return {"x": self.x[index].to(self.device), "y": self.y[index].to(self.device)}
