"""The per-worker training loop: one readable function with Ray Train's touchpoints in plain view.

the worker's shard (held in memory from the object store, or Ray Data's get_dataset_shard when it
streams) -> batches -> prepare_model (DDP) -> optimiser steps -> evaluation on the held-out shard
-> ray.train.report(metrics, checkpoint). Resume is the normal path: the loop always asks
get_checkpoint() first and continues from the epoch after it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.train
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
    verify,
)
from modelfoundry.tasks import batch_loss, distill_loss, summarize
from modelfoundry.training import sharding
from modelfoundry.training.plan import TeacherSpec, WorkerPlan
from modelfoundry.training.session import InMemoryShard, TrainSession, report


class InjectedFault(RuntimeError):
    """Raised once by the fault-injection switch (train.fail_at_epoch) to test recovery."""


def train_loop_per_worker(plan: WorkerPlan, session: TrainSession | None = None) -> None:
    session = session or TrainSession()
    cfg = plan.job
    rank, world = session.rank_world()
    torch.manual_seed(cfg.train.seed)

    device = session.device()
    # FSDP shards over the Train workers' process group (a one-process Tune trial has none)
    fsdp = cfg.train.strategy == "fsdp" and dist.is_available() and dist.is_initialized()
    if cfg.train.strategy == "fsdp" and not fsdp and rank == 0:
        print(f"[{cfg.name}] train.strategy fsdp: one process without a process group; nothing to shard", flush=True)
    use_bf16 = device.type == "cuda" and cfg.train.precision in ("auto", "bf16")
    state = restore(plan, session, device, fsdp, use_bf16, rank)
    model = state.model if fsdp else session.prepare(state.model)
    # bf16 on GPU: FSDP computes in bf16 by its mixed-precision policy, DDP under autocast
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 and not fsdp else contextlib.nullcontext
    )
    teacher = load_teacher(plan.teacher, device)
    # the global batch stays batch_size x the most workers whatever the world (elastic resizes)
    epochs = Epochs(
        plan, model, state.optimizer, state.scheduler, device, autocast, teacher, cfg.train.batch_per_worker(world)
    )
    if plan.shares:  # this rank's shares in the object store, held as tensors
        train_shard, test_shard = (InMemoryShard.fetch(plan.shares[n][rank], device) for n in ("train", "test"))
    else:  # Ray Data streams the shard every epoch (augmentation draws new samples each time)
        train_shard, test_shard = session.shard("train"), session.shard("test")

    for epoch in range(state.start_epoch, cfg.train.epochs + 1):
        maybe_inject_fault(cfg, plan.run_path, epoch, rank)
        metrics = {**epochs.run(epoch, train_shard, test_shard), "workers": world}
        state.history.append({**metrics, "attempt": state.attempt})
        report(session, plan, model, state.optimizer, state.scheduler, metrics, state.history, rank, world, fsdp)


@dataclass
class Restored:
    """A worker's starting point: the model and optimizer, from a checkpoint when there is one."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    start_epoch: int = 1
    attempt: int = 0
    history: list = field(default_factory=list)


def restore(
    plan: WorkerPlan, session: TrainSession, device: torch.device, fsdp: bool, bf16: bool, rank: int
) -> Restored:
    """The model (the same init on every rank; DDP also broadcasts rank 0's weights), resumed from
    the latest checkpoint when there is one (after a failure or with --resume), else, when given,
    started from another run's checkpoint (a PBT exploit: the donor's weights and optimizer state,
    this config's hyperparameters)."""
    cfg = plan.job
    model = build_model(cfg.model.family, cfg.model.preset, **plan.model_fields, **cfg.model.params)
    set_normalization(model, plan.stats)
    if cfg.train.activation_checkpointing:
        model.set_activation_checkpointing(True)
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
            model = sharding.shard(model, device, bf16=bf16)
        optimizer = make_optimizer(cfg, model)
        cosine = cfg.train.lr_schedule == "cosine"
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.train.epochs) if cosine else None
        if sharded:
            sharding.load(d, model, optimizer)
        elif state:
            optimizer.load_state_dict(state["optimizer"])
    restored = Restored(model, optimizer, scheduler)
    if state:
        if scheduler and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        restored.start_epoch = state["epoch"] + 1
        restored.attempt, restored.history = state["attempt"] + 1, state["history"]
    if checkpoint:
        if seeded:
            set_hyperparameters(cfg, optimizer, keep_lr=scheduler is not None)
        if rank == 0 and not state:  # weights only: a pruned model to fine-tune
            print(f"[{cfg.name}] starting from the weights of {plan.start_from or 'the checkpoint'}", flush=True)
        elif rank == 0:
            source = "the checkpoint, with this config's hyperparameters" if seeded else "the checkpoint"
            print(f"[{cfg.name}] resuming from {source} (epoch {restored.start_epoch - 1})", flush=True)
    return restored


@dataclass
class Epochs:
    """One epoch: optimiser steps over the train shard, then evaluation on the held-out shard;
    the metrics summed over every worker."""

    plan: WorkerPlan
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    teacher: Teacher | None
    batch: int  # this worker's share of the global batch

    def run(self, epoch: int, train_shard, test_shard) -> dict[str, Any]:
        cfg, task, y_std = self.plan.job, self.plan.task, float(self.plan.stats["y_std"])
        started_at, t0 = time.time(), time.perf_counter()
        self.model.train()
        sums: dict[str, float] = {}
        for batch in train_shard.iter_torch_batches(
            batch_size=self.batch,
            device=self.device,
            local_shuffle_buffer_size=4 * self.batch,
            local_shuffle_seed=cfg.train.seed + epoch,
        ):
            with self.autocast():
                if self.teacher:
                    t = self.teacher
                    loss, batch_sums = distill_loss(self.model, t.model, batch["x"], batch["y"], t.temperature, t.alpha)
                else:
                    loss, batch_sums = batch_loss(task, self.model, batch["x"], batch["y"], y_std)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            add_into(sums, batch_sums)
        if self.scheduler:
            self.scheduler.step()
        train_time = time.perf_counter() - t0
        train_sums = all_reduce(sums, self.device)

        self.model.eval()
        sums = {}
        with torch.no_grad(), self.autocast():
            for batch in test_shard.iter_torch_batches(batch_size=512, device=self.device):
                add_into(sums, batch_loss(task, self.model, batch["x"], batch["y"], y_std)[1])
        return {
            "epoch": epoch,
            **summarize(task, train_sums, "train"),
            **summarize(task, all_reduce(sums, self.device), "test"),
            "samples_per_s": train_sums["n"] / max(train_time, 1e-9),
            "epoch_time_s": time.perf_counter() - t0,
            "train_time_s": train_time,
            "started_at": started_at,
            "lr": self.optimizer.param_groups[0]["lr"],
            **self.plan.baselines,
        }


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
