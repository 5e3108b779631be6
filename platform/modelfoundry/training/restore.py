"""Where a worker starts: the model and optimizer built, then loaded from the newest of the run's
epoch checkpoint (Ray Train's, after a failure or with --resume) and its step snapshot
(train.checkpoint_every_steps), else from another run's checkpoint (a PBT exploit, a pruned
model to fine-tune)."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.train
import torch

from modelfoundry.config import JobConfig
from modelfoundry.models import build_model, set_normalization
from modelfoundry.storage import checkpoint_location
from modelfoundry.store.checkpoint import MODEL_FILE, checkpoint_epoch, load_train_state, verify
from modelfoundry.training import sharding
from modelfoundry.training.plan import WorkerPlan
from modelfoundry.training.session import TrainSession
from modelfoundry.training.snapshots import load_snapshot


@dataclass
class Restored:
    """A worker's starting point: the model and optimizer, from a checkpoint when there is one."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    start_epoch: int = 1
    start_step: int = 0  # steps of start_epoch already done (a step snapshot's)
    attempt: int = 0
    history: list = field(default_factory=list)
    sums: dict = field(default_factory=dict)  # start_epoch's metric totals so far, over all ranks
    recoveries: list = field(default_factory=list)  # each attempt's resume point (snapshots.py)


def restore(
    plan: WorkerPlan, session: TrainSession, device: torch.device, fsdp: bool, bf16: bool, rank: int
) -> Restored:
    restored = from_checkpoint(plan, session, device, fsdp, bf16, rank)
    if plan.job.train.checkpoint_every_steps and not session.checkpoints_from_elsewhere:
        from_snapshot(plan, restored, rank)
    return restored


def from_snapshot(plan: WorkerPlan, restored: Restored, rank: int) -> None:
    """The run's step snapshot over `restored` when it is newer (it is of the epoch the checkpoint
    would start, or later) and cut from the same global batch; its recoveries either way."""
    snap = load_snapshot(plan.run_path)
    if snap is None:
        return
    restored.recoveries = list(snap["recoveries"])
    g = plan.job.train.global_batch
    if snap["epoch"] < restored.start_epoch:
        return
    if snap["global_batch"] != g:
        if rank == 0:
            print(
                f"[{plan.job.name}] step snapshot skipped: its global batch {snap['global_batch']} is not {g}",
                flush=True,
            )
        return
    restored.model.load_state_dict(snap["model"])
    restored.optimizer.load_state_dict(snap["optimizer"])
    if restored.scheduler and snap["scheduler"]:
        restored.scheduler.load_state_dict(snap["scheduler"])
    restored.attempt = max(restored.attempt, snap["attempt"] + 1)
    restored.start_epoch, restored.start_step = snap["epoch"], snap["step"]
    restored.history, restored.sums = list(snap["history"]), dict(snap["sums"])
    if rank == 0:
        print(
            f"[{plan.job.name}] resuming from the step snapshot (epoch {snap['epoch']}, step {snap['step']})",
            flush=True,
        )


def from_checkpoint(
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
