"""The per-worker training loop: one readable function with Ray Train's touchpoints in plain view.

the worker's shard (held in memory from the object store, or Ray Data's get_dataset_shard when it
streams) -> batches -> prepare_model (DDP) -> optimiser steps -> evaluation on the held-out shard
-> ray.train.report(metrics, checkpoint). Resume is the normal path: the loop always asks
get_checkpoint() first and continues from the epoch after it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from modelfoundry.config import JobConfig
from modelfoundry.models import build_model, set_normalization
from modelfoundry.storage import checkpoint_location, filesystem, join
from modelfoundry.store.checkpoint import (
    MODEL_FILE,
    checkpoint_epoch,
    load_checkpoint,
    load_train_state,
    unwrap,
    verify,
    write_checkpoint,
)
from modelfoundry.tasks import batch_loss, distill_loss, summarize
from modelfoundry.training import sharding
from modelfoundry.training.plan import TeacherSpec, WorkerPlan


class InjectedFault(RuntimeError):
    """Raised once by the fault-injection switch (train.fail_at_epoch) to test recovery."""


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


def train_loop_per_worker(plan: WorkerPlan, session: TrainSession | None = None) -> None:
    session = session or TrainSession()
    cfg, stats, task = plan.job, plan.stats, plan.task
    rank, world = session.rank_world()
    torch.manual_seed(cfg.train.seed)

    device = session.device()
    # FSDP shards over the Train workers' process group (a one-process Tune trial has none)
    fsdp = cfg.train.strategy == "fsdp" and dist.is_available() and dist.is_initialized()
    if cfg.train.strategy == "fsdp" and not fsdp and rank == 0:
        print(f"[{cfg.name}] train.strategy fsdp: one process without a process group; nothing to shard", flush=True)
    use_bf16 = device.type == "cuda" and cfg.train.precision in ("auto", "bf16")

    # ---- model (the same init on every rank; DDP also broadcasts rank 0's weights)
    model = build_model(cfg.model.family, cfg.model.preset, **plan.model_fields, **cfg.model.params)
    set_normalization(model, stats)
    if cfg.train.activation_checkpointing:
        model.set_activation_checkpointing(True)

    # ---- resume from the latest checkpoint, if there is one (after a failure or with --resume);
    # else, when given, start from another run's checkpoint (a PBT exploit: the donor's weights and
    # optimizer state, this config's hyperparameters)
    start_epoch, attempt, history = 1, 0, []
    checkpoint, seeded = session.checkpoint(), session.checkpoints_from_elsewhere
    if plan.resume_from and checkpoint_epoch(plan.resume_from) > (
        checkpoint_epoch(checkpoint_location(checkpoint)) if checkpoint else 0
    ):
        checkpoint, seeded = ray.train.Checkpoint(plan.resume_from), False  # newer than Ray Train knows of
    if checkpoint is None and plan.start_from:
        checkpoint, seeded = ray.train.Checkpoint(plan.start_from), True
    with contextlib.ExitStack() as stack:
        d = stack.enter_context(checkpoint.as_directory()) if checkpoint else None
        meta = verify(d) if d else None  # a truncated or corrupt checkpoint is refused, never half-loaded
        state = load_train_state(d) if d else None
        sharded = meta is not None and meta.sharded is not None
        if sharded and not fsdp:
            raise ValueError(
                f"checkpoint {checkpoint.path} is sharded (an FSDP run's); resume it with train.strategy fsdp"
            )
        if d and not sharded:
            model.load_state_dict(torch.load(os.path.join(d, MODEL_FILE), map_location="cpu", weights_only=True))
        if fsdp:
            model = sharding.shard(model, device, bf16=use_bf16)
        optimizer = make_optimizer(cfg, model)
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.train.epochs)
            if cfg.train.lr_schedule == "cosine"
            else None
        )
        if sharded:
            sharding.load(d, model, optimizer)
        elif state:
            optimizer.load_state_dict(state["optimizer"])
    if state:
        if scheduler and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        start_epoch = state["epoch"] + 1
        attempt, history = state["attempt"] + 1, state["history"]
    if checkpoint:
        if seeded:
            set_hyperparameters(cfg, optimizer, keep_lr=scheduler is not None)
        if rank == 0 and not state:  # weights only: a pruned model to fine-tune
            print(f"[{cfg.name}] starting from the weights of {plan.start_from or 'the checkpoint'}", flush=True)
        elif rank == 0:
            source = "the checkpoint, with this config's hyperparameters" if seeded else "the checkpoint"
            print(f"[{cfg.name}] resuming from {source} (epoch {start_epoch - 1})", flush=True)

    if not fsdp:
        model = session.prepare(model)
    # bf16 on GPU: FSDP computes in bf16 by its mixed-precision policy, DDP under autocast
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 and not fsdp else contextlib.nullcontext
    )

    if plan.shares:  # this rank's shares in the object store, held as tensors
        train_shard, test_shard = (InMemoryShard.fetch(plan.shares[n][rank], device) for n in ("train", "test"))
    else:  # Ray Data streams the shard every epoch (augmentation draws new samples each time)
        train_shard, test_shard = session.shard("train"), session.shard("test")
    y_std = float(stats["y_std"])
    teacher = load_teacher(plan.teacher, device)

    for epoch in range(start_epoch, cfg.train.epochs + 1):
        maybe_inject_fault(cfg, plan.run_path, epoch, rank)
        started_at = time.time()
        t0 = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        for batch in train_shard.iter_torch_batches(
            batch_size=cfg.train.batch_size,
            device=device,
            local_shuffle_buffer_size=4 * cfg.train.batch_size,
            local_shuffle_seed=cfg.train.seed + epoch,
        ):
            with autocast():
                if teacher:
                    loss, batch_sums = distill_loss(
                        model, teacher.model, batch["x"], batch["y"], teacher.temperature, teacher.alpha
                    )
                else:
                    loss, batch_sums = batch_loss(task, model, batch["x"], batch["y"], y_std)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            add_into(sums, batch_sums)
        if scheduler:
            scheduler.step()
        train_time = time.perf_counter() - t0
        train_sums = all_reduce(sums, device)

        model.eval()
        sums = {}
        with torch.no_grad(), autocast():
            for batch in test_shard.iter_torch_batches(batch_size=512, device=device):
                add_into(sums, batch_loss(task, model, batch["x"], batch["y"], y_std)[1])
        test_sums = all_reduce(sums, device)

        metrics = {
            "epoch": epoch,
            **summarize(task, train_sums, "train"),
            **summarize(task, test_sums, "test"),
            "samples_per_s": train_sums["n"] / max(train_time, 1e-9),
            "epoch_time_s": time.perf_counter() - t0,
            "train_time_s": train_time,
            "started_at": started_at,
            "lr": optimizer.param_groups[0]["lr"],
            **plan.baselines,
        }
        history.append({**metrics, "attempt": attempt})
        report(session, plan, model, optimizer, scheduler, metrics, history, rank, world, fsdp)


def _epoch_of(checkpoint: str) -> int:
    """The epoch a checkpoint (directory or URI) holds, from its model.json (0 when unreadable)."""
    import json

    fs, path = filesystem(join(checkpoint, "model.json"))
    try:
        with fs.open_input_stream(path) as f:
            return int(json.loads(f.read())["metrics"]["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


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


@dataclass
class Teacher:
    model: torch.nn.Module
    temperature: float
    alpha: float


def load_teacher(spec: TeacherSpec | None, device: torch.device) -> Teacher | None:
    """Distillation: the teacher (a model-store path, sha256-checked) frozen on this worker."""
    if not spec:
        return None
    loaded = load_checkpoint(spec.path, device=str(device))
    for p in loaded.model.parameters():
        p.requires_grad_(False)
    return Teacher(loaded.model.eval(), spec.temperature, spec.alpha)


def make_optimizer(cfg: JobConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


class InMemoryShard:
    """A worker's dataset shard held as tensors on its device, iterated like Ray Data's
    iter_torch_batches: a seeded permutation per epoch instead of streaming and a local shuffle
    buffer every epoch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
        self.x, self.y = x.to(device), y.to(device)

    @classmethod
    def fetch(cls, refs, device: torch.device) -> InMemoryShard:
        """A share put into the object store by the driver (trainer.rank_shares)."""
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


def set_hyperparameters(cfg: JobConfig, optimizer: torch.optim.Optimizer, keep_lr: bool = False) -> None:
    """The config's lr / weight decay / momentum over those loaded with an optimizer state (the
    lr stays when a schedule owns it)."""
    for group in optimizer.param_groups:
        if not keep_lr:
            group["lr"] = cfg.train.lr
        group["weight_decay"] = cfg.train.weight_decay
        if "momentum" in group:
            group["momentum"] = cfg.train.momentum


def add_into(total: dict[str, Any], part: dict[str, Any]) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0) + v


def all_reduce(sums: dict[str, Any], device: torch.device) -> dict[str, float]:
    """Metric totals (tensors on the device, or numbers) as floats, summed over all workers (each
    evaluated its own shard): the epoch's one host sync."""
    keys = sorted(sums)
    if not keys:
        return {}
    t = torch.stack([torch.as_tensor(sums[k], dtype=torch.float64, device=device) for k in keys])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


def maybe_inject_fault(cfg: JobConfig, run_path: str, epoch: int, rank: int) -> None:
    """train.fail_at_epoch: rank 0 raises once at that epoch (a marker in the run's storage
    remembers it fired, so the retried attempt goes on)."""
    if cfg.train.fail_at_epoch != epoch or rank != 0:
        return
    fs, path = filesystem(join(run_path, "fault-injected"))
    if fs.get_file_info(path).type.name != "NotFound":
        return
    with fs.open_output_stream(path) as f:
        f.write(str(epoch).encode())
    raise InjectedFault(f"injected fault at epoch {epoch} (train.fail_at_epoch)")
