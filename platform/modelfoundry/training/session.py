"""What the training loop needs from its runner: a Ray Train worker of a TorchTrainer
(TrainSession) or a one-process Tune trial (TuneSession); a dataset shard held as tensors; an
epoch's report with its checkpoint."""

from __future__ import annotations

import tempfile
import time
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from modelfoundry.store.checkpoint import unwrap, write_checkpoint
from modelfoundry.training import sharding
from modelfoundry.training.plan import WorkerPlan


class TrainSession:
    """What the loop needs from its runner, here a Ray Train worker of a TorchTrainer."""

    # whether a checkpoint from the runner may come from another run (the config's
    # hyperparameters then apply over the loaded optimizer state)
    checkpoints_from_elsewhere = False

    def rank_world(self) -> tuple[int, int]:
        ctx = ray.train.get_context()
        return ctx.get_world_rank(), ctx.get_world_size()

    def checkpoint(self):
        return ray.train.get_checkpoint()

    def shard(self, name: str):
        return ray.train.get_dataset_shard(name)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)  # moves to the device; wraps in DDP when world > 1

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def report(self, metrics: dict, directory: str | None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory) if directory else None)


class TuneSession(TrainSession):
    """The same loop as a one-process Tune trial (no TorchTrainer start-up): the splits in memory,
    Tune's checkpoints (its own after a resume, another trial's after a PBT exploit: either way the
    config's hyperparameters apply)."""

    checkpoints_from_elsewhere = True

    def __init__(self, splits, use_gpu: bool) -> None:
        self.splits = splits
        self._device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def rank_world(self) -> tuple[int, int]:
        return 0, 1

    def checkpoint(self):
        from ray import tune

        return tune.get_checkpoint()

    def shard(self, name: str) -> InMemoryShard:
        s = self.splits
        x, y = (s.x_train, s.y_train) if name == "train" else (s.x_test, s.y_test)
        return InMemoryShard(torch.from_numpy(x), torch.from_numpy(y), self._device)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self._device)

    def device(self) -> torch.device:
        return self._device

    def report(self, metrics: dict, directory: str | None) -> None:
        from ray import tune

        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory) if directory else None)


class InMemoryShard:
    """A worker's dataset shard held as tensors on its device, iterated like Ray Data's
    iter_torch_batches: a seeded permutation per epoch instead of streaming and a local shuffle
    buffer every epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
        self.x, self.y = x.to(device), y.to(device)

    @classmethod
    def fetch(cls, refs, device: torch.device) -> InMemoryShard:
        """A share put into the object store by the driver (shares.rank_shares)."""
        x, y = ray.get(list(refs))
        return cls(torch.tensor(x), torch.tensor(y), device)  # a copy: the store's buffers are read-only

    def iter_torch_batches(self, batch_size: int, local_shuffle_seed: int | None = None, **_: Any):
        n = len(self.x)
        order = (
            torch.randperm(n, generator=torch.Generator().manual_seed(local_shuffle_seed)).to(self.x.device)
            if local_shuffle_seed is not None
            else None
        )
        for i in range(0, n, batch_size):
            if order is None:
                yield {"x": self.x[i : i + batch_size], "y": self.y[i : i + batch_size]}
            else:
                idx = order[i : i + batch_size]
                yield {"x": self.x[idx], "y": self.y[idx]}


def report(
    session: TrainSession,
    plan: WorkerPlan,
    model,
    optimizer,
    scheduler,
    metrics: dict,
    history: list,
    rank: int,
    world: int,
    fsdp: bool = False,
) -> None:
    """Every rank reports. DDP: rank 0 attaches the checkpoint (model.pt + model.json +
    state.pt). FSDP: every rank attaches its shards, rank 0 also model.json and state.pt; Ray
    Train gathers them into one checkpoint directory."""
    cfg = plan.job
    t0 = time.perf_counter()
    if rank != 0 and not fsdp:
        session.report(metrics, None)
        return
    with tempfile.TemporaryDirectory(prefix="mf-report-") as tmp:
        shards = sharding.save(tmp, model, optimizer) if fsdp else None  # collective: every rank
        full = sharding.full_state(model) if fsdp else None  # collective too: rank 0 gets the weights
        if rank == 0:
            train_state = {
                **({} if fsdp else {"optimizer": optimizer.state_dict()}),
                "scheduler": scheduler.state_dict() if scheduler else None,
                "epoch": metrics["epoch"],
                "attempt": history[-1]["attempt"],
                "history": history,
            }
            extra = {"task": plan.task, "run": cfg.name, "epoch": metrics["epoch"], "workers": world}
            write_checkpoint(
                tmp,
                unwrap(model),
                dataset=plan.dataset,
                metrics=metrics,
                extra={**extra, "strategy": "fsdp" if fsdp else "ddp", "history": history},
                train_state=train_state,
                state=full,
                shards=shards,
            )
        session.report(metrics, tmp)
    if rank != 0:
        return
    shown = {k: round(v, 4) for k, v in metrics.items() if k.startswith("test_") or k == "train_loss"}
    print(
        f"[{cfg.name}] epoch {metrics['epoch']}/{cfg.train.epochs} {shown} "
        f"{metrics['samples_per_s']:.0f} samples/s, report {time.perf_counter() - t0:.2f}s",
        flush=True,
    )
