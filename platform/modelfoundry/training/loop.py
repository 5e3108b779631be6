"""The per-worker training loop: one readable function with Ray Train's touchpoints in plain view.

the worker's shard (held in memory from the object store, or Ray Data's get_dataset_shard when it
streams) -> batches -> prepare_model (DDP) -> optimiser steps -> evaluation on the held-out shard
-> ray.train.report(metrics, checkpoint). Resume is the normal path: the loop always asks
get_checkpoint() first and continues from the epoch after it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from modelfoundry.config import JobConfig
from modelfoundry.storage import filesystem, join
from modelfoundry.store.checkpoint import load_checkpoint, unwrap
from modelfoundry.tasks import batch_loss, distill_loss, summarize
from modelfoundry.training.global_order import GlobalShard
from modelfoundry.training.plan import TeacherSpec, WorkerPlan
from modelfoundry.training.restore import Restored, restore
from modelfoundry.training.session import InMemoryShard, TrainSession, report
from modelfoundry.training.snapshots import Snapshots


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
    t0 = time.perf_counter()
    state = restore(plan, session, device, fsdp, use_bf16, rank)
    model = state.model if fsdp else session.prepare(state.model)
    # bf16 on GPU: FSDP computes in bf16 by its mixed-precision policy, DDP under autocast
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 and not fsdp else contextlib.nullcontext
    )
    teacher = load_teacher(plan.teacher, device)
    if plan.shares and cfg.train.global_order:  # the whole split; each step this rank's part of it
        g = cfg.train.global_batch
        train_shard, test_shard = (GlobalShard(plan.shares[n][0], rank, world, device, g) for n in ("train", "test"))
    elif plan.shares:  # this rank's shares in the object store, held as tensors
        train_shard, test_shard = (InMemoryShard.fetch(plan.shares[n][rank], device) for n in ("train", "test"))
    else:  # Ray Data streams the shard every epoch (augmentation draws new samples each time)
        train_shard, test_shard = session.shard("train"), session.shard("test")
    if state.attempt:  # what a restart cost in the training function itself, per rank
        took = time.perf_counter() - t0
        print(
            f"[{cfg.name}] attempt {state.attempt}, rank {rank}/{world}: restored, data held in {took:.1f}s", flush=True
        )
    snapshots = (
        Snapshots(plan.run_path, cfg.train.checkpoint_every_steps, rank, state.recoveries)
        if cfg.train.checkpoint_every_steps and not session.checkpoints_from_elsewhere
        else None
    )
    # the global batch stays batch_size x the most workers whatever the world (elastic resizes)
    epochs = Epochs(plan, model, state, device, autocast, teacher, cfg.train.batch_per_worker(world), snapshots, rank)
    for epoch in range(state.start_epoch, cfg.train.epochs + 1):
        maybe_inject_fault(cfg, plan.run_path, epoch, rank)
        metrics = {**epochs.run(epoch, train_shard, test_shard), "workers": world}
        state.history.append({**metrics, "attempt": state.attempt})
        report(session, plan, model, state.optimizer, state.scheduler, metrics, state.history, rank, world, fsdp)
    if snapshots:
        snapshots.close()


@dataclass
class Epochs:
    """One epoch: optimiser steps over the train shard, then evaluation on the held-out shard;
    the metrics summed over every worker. A resumed attempt's first epoch starts after the
    steps its snapshot holds, with their metric totals."""

    plan: WorkerPlan
    model: torch.nn.Module
    state: Restored  # the optimizer, schedule and where this attempt starts
    device: torch.device
    autocast: Callable[[], contextlib.AbstractContextManager]
    teacher: Teacher | None
    batch: int  # this worker's share of the global batch (the Ray Data and per-rank shard paths)
    snapshots: Snapshots | None = None
    rank: int = 0

    def run(self, epoch: int, train_shard, test_shard) -> dict[str, Any]:
        task, y_std = self.plan.task, float(self.plan.stats["y_std"])
        started_at, t0 = time.time(), time.perf_counter()
        self.model.train()
        train_sums = all_reduce(self._train(epoch, train_shard), self.device)
        if self.state.scheduler:
            self.state.scheduler.step()
        train_time = time.perf_counter() - t0

        self.model.eval()
        sums: dict[str, Any] = {}
        if isinstance(test_shard, GlobalShard):
            batches = test_shard.eval_batches()
        else:
            batches = test_shard.iter_torch_batches(batch_size=512, device=self.device)
        with torch.no_grad(), self.autocast():
            for batch in batches:
                add_into(sums, batch_loss(task, self.model, batch["x"], batch["y"], y_std)[1])
        return {
            "epoch": epoch,
            **summarize(task, train_sums, "train"),
            **summarize(task, all_reduce(sums, self.device), "test"),
            "samples_per_s": train_sums["n"] / max(train_time, 1e-9),
            "epoch_time_s": time.perf_counter() - t0,
            "train_time_s": train_time,
            "started_at": started_at,
            "lr": self.state.optimizer.param_groups[0]["lr"],
            **self.plan.baselines,
        }

    def _train(self, epoch: int, shard) -> dict[str, Any]:
        """The epoch's optimizer steps; this rank's metric totals (rank 0's include a snapshot's)."""
        cfg, task, y_std = self.plan.job, self.plan.task, float(self.plan.stats["y_std"])
        start, sums = 0, {}
        if epoch == self.state.start_epoch and self.state.start_step:
            start, sums = self.state.start_step, (dict(self.state.sums) if self.rank == 0 else {})
        if isinstance(shard, GlobalShard):
            steps = shard.batches(epoch, cfg.train.seed, start)
        else:
            steps = enumerate(
                shard.iter_torch_batches(
                    batch_size=self.batch,
                    device=self.device,
                    local_shuffle_buffer_size=4 * self.batch,
                    local_shuffle_seed=cfg.train.seed + epoch,
                ),
                1,
            )
        optimizer = self.state.optimizer
        per_epoch = shard.steps_per_epoch() if isinstance(shard, GlobalShard) else None
        for step, batch in steps:
            with self.autocast():
                if self.teacher:
                    t = self.teacher
                    loss, batch_sums = distill_loss(self.model, t.model, batch["x"], batch["y"], t.temperature, t.alpha)
                else:
                    loss, batch_sums = batch_loss(task, self.model, batch["x"], batch["y"], y_std)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            add_into(sums, batch_sums)
            if per_epoch:
                self._after_step(epoch, step, per_epoch, sums)
        return sums

    def _after_step(self, epoch: int, step: int, per_epoch: int, sums: dict[str, Any]) -> None:
        """A step snapshot when one is due; the step fault (train.fail_at_step) when it is this one."""
        cfg, snaps = self.plan.job, self.snapshots
        if snaps:
            snaps.first_step(self.state.attempt, epoch, step)
        if snaps and snaps.due() and step < per_epoch:  # at an epoch's end its checkpoint follows
            totals = all_reduce(sums, self.device)  # rank 0's included the snapshot's it resumed from
            state = {
                "epoch": epoch,
                "step": step,
                "global_batch": cfg.train.global_batch,
                "model": unwrap(self.model).state_dict() if self.rank == 0 else None,
                "optimizer": self.state.optimizer.state_dict() if self.rank == 0 else None,
                "scheduler": self.state.scheduler.state_dict() if self.state.scheduler and self.rank == 0 else None,
                "sums": totals,
                "history": self.state.history,
                "attempt": self.state.attempt,
            }
            snaps.save(state)
        if cfg.train.fail_at_step and self.rank == 0 and (epoch - 1) * per_epoch + step == cfg.train.fail_at_step:
            fire_once(self.plan.run_path, "fault-injected-step", f"injected fault at step {cfg.train.fail_at_step}")


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
    if cfg.train.fail_at_epoch == epoch and rank == 0:
        fire_once(run_path, "fault-injected", f"injected fault at epoch {epoch} (train.fail_at_epoch)")


def fire_once(run_path: str, marker: str, message: str) -> None:
    """Raise InjectedFault unless `marker` exists in the run's storage (then written first)."""
    fs, path = filesystem(join(run_path, marker))
    if fs.get_file_info(path).type.name != "NotFound":
        return
    with fs.open_output_stream(path) as f:
        f.write(message.encode())
    raise InjectedFault(message)
