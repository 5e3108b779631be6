"""The driver side of a training run: validate, check capacity, build the TorchTrainer, fit,
export the best checkpoint to the model store, plot the learning curves."""

from __future__ import annotations

import os
import time
from typing import Any

from modelfoundry.config import JobConfig
from modelfoundry.data import load_splits, ray_datasets
from modelfoundry.runs import Outcome, RunContext
from modelfoundry.storage import absolute, check_writable, checkpoint_location, join
from modelfoundry.tasks import task_of, task_spec
from modelfoundry.tracking import Tracker
from modelfoundry.training.capacity import check_capacity, workers_text
from modelfoundry.training.plan import TeacherSpec, worker_plan
from modelfoundry.training.resume import (
    RESUME_SAFE,
    check_resume_config,
    latest_checkpoint,
    run_dirs,
    write_run_config,
)
from modelfoundry.training.shares import holds_in_memory, with_shares

# Ray Train's controller polls its workers for reports every 2 s by default, and a report waits
# while the previous one is still unpolled: epochs shorter than the poll interval stretch to it
# (20 short epochs lost ~35 s). Polling costs CPU beside the training, though: on a 2-core machine
# 0.1 s took ~0.04 cores more than 0.5 s, 0.25 s ~0.02, and longer intervals saved nothing more
# (bench/train_poll_cost.py, docs/results.md). The platform polls every 0.25 s: 0.4 s digits epochs
# do not stretch (they did at 0.5 s: 30% per-epoch overhead). Override with the env var.
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
DEFAULT_HEALTH_CHECK_S = "0.25"


def make_trainer(
    cfg: JobConfig,
    splits,
    storage_path: str,
    run_name: str,
    callbacks: list | None = None,
    start_from: str | None = None,
    teacher: TeacherSpec | None = None,
    resume_from: str | None = None,
):
    """The TorchTrainer for `cfg`: used by `train` below and by each Tune trial. `start_from`: a
    checkpoint (directory or URI) to start from, with `cfg`'s hyperparameters (PBT's exploit).
    `resume_from`: this run's newest checkpoint on storage, resumed when Ray Train's record of
    the run holds none as new (see latest_checkpoint)."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    ranking = task_spec(task_of(cfg.model.family, splits.spec.task))
    metric, mode = ranking.metric, ranking.mode
    ray.data.DataContext.get_current().enable_progress_bars = False  # one line per epoch instead
    os.environ.setdefault(HEALTH_CHECK_ENV, DEFAULT_HEALTH_CHECK_S)  # propagated to controller + workers
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")  # else every worker print shows twice
    os.environ[START_TIMEOUT_ENV] = str(cfg.train.placement_timeout_s)  # per run, from its config
    plan = worker_plan(cfg, splits, join(storage_path, run_name), start_from, teacher, resume_from)
    in_memory = holds_in_memory(cfg, splits)
    if in_memory:
        plan = with_shares(plan, cfg, splits)
    resources = {
        "CPU": cfg.train.cpus_per_worker,
        **({"GPU": 1} if cfg.train.use_gpu else {}),
        **cfg.train.worker_resources,
    }
    return TorchTrainer(
        train_loop_per_worker=_loop(),
        train_loop_config=plan,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.worker_bounds if cfg.train.workers else cfg.train.num_workers,
            **({"elastic_resize_monitor_interval_s": cfg.train.workers.resize_interval_s} if cfg.train.workers else {}),
            use_gpu=cfg.train.use_gpu,
            resources_per_worker=resources,
            placement_strategy=cfg.train.placement_strategy,
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.train.use_gpu else "gloo"),
        datasets=None if in_memory else ray_datasets(splits, cfg.data),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(
                max_failures=cfg.train.max_failures,
                # an elastic run may try a size whose node just died (Ray has not seen it go yet):
                # each failed start counts here, and the next decision sees the smaller cluster
                controller_failure_limit=max(1, cfg.train.max_failures) if cfg.train.workers else 1,
            ),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.keep_checkpoints, checkpoint_score_attribute=metric, checkpoint_score_order=mode
            ),
            callbacks=callbacks or [],
        ),
    )


def train(
    cfg: JobConfig,
    *,
    resume: bool = False,
    export: bool = True,
    allow_changes: set[str] | frozenset[str] = frozenset(),
    splits=None,
    start_from: str | None = None,
    teacher: TeacherSpec | None = None,
    tracking_uri: str | None = None,
    tracker: Tracker | None = None,
    lineage: dict[str, Any] | None = None,
) -> Outcome:
    """Train `cfg` on the connected Ray cluster (see cluster.connect) and export the best model.
    resume: continue the latest run of cfg.name; its config must match (allow_changes: fields of
    RESUME_SAFE that may differ). The compression steps pass `splits` (a distillation's transfer
    set added), `start_from` (a pruned model to fine-tune), `teacher` (to distil from) and their
    own MLflow `tracker` (else the run is tracked at tracking_uri, see modelfoundry.tracking);
    `lineage`: links recorded in the exported version's lineage besides the run's own."""
    from modelfoundry.training.plots import plot_run

    splits = splits or load_splits(cfg.data)  # bad data config fails here, before any Ray work
    run_id = _prepare(cfg, resume, set(allow_changes))
    ranking = task_spec(task_of(cfg.model.family, splits.spec.task))
    storage, run_path = absolute(cfg.train.storage), join(absolute(cfg.train.storage), cfg.name, run_id)
    tags = {"foundry.run_path": run_path, "foundry.resumed": str(resume)}
    with RunContext(
        "train", cfg.name, run_id, storage, cfg.train.model_store,
        params=cfg.to_dict(), tags=tags, tracking_uri=tracking_uri, tracker=tracker,
    ) as run:  # fmt: skip
        trainer = make_trainer(
            cfg,
            splits,
            join(storage, cfg.name),
            run_id,
            callbacks=[relay := _relay()],
            start_from=start_from,
            teacher=teacher,
            resume_from=latest_checkpoint(run_path) if resume else None,
        )
        result = _fit(cfg, splits, trainer, relay, run, timeline := [])
        best_ckpt, best_metrics = _best(result, ranking.metric, ranking.mode)
        best, last = checkpoint_location(best_ckpt), checkpoint_location(result.checkpoint)
        outcome = Outcome("train", cfg.name, run_path, ranking.metric, ranking.mode, best_metrics, best, last)
        outcome.details.update(_run_details(cfg, run_path, timeline))
        if export:
            run_links = {"name": cfg.name, "id": run_id, "path": run_path}
            outcome.model = run.export(outcome.checkpoint, cfg.name, cfg.to_dict(), run=run_links, **(lineage or {}))
        outcome.files = plot_run(outcome.last_checkpoint, outcome.path)
    return run.finish(outcome)


def _run_details(cfg: JobConfig, run_path: str, timeline: list) -> dict[str, Any]:
    """An elastic run's worker bounds and timeline; a snapshotting run's recoveries (each attempt
    after the first: the epoch and step it resumed after, when its first step completed)."""
    from modelfoundry.training.snapshots import load_snapshot

    out: dict[str, Any] = {}
    if cfg.train.workers:
        out["workers"] = {"min": cfg.train.workers.min, "max": cfg.train.workers.max, "timeline": timeline}
    snap = load_snapshot(run_path) if cfg.train.checkpoint_every_steps else None
    if snap is not None:
        out["recoveries"] = [r for r in snap["recoveries"] if r["attempt"] > 0]
    return out


def _prepare(cfg: JobConfig, resume: bool, allow_changes: set[str]) -> str:
    """Check everything a run needs before it starts (storage writable, Ray connected, capacity,
    a resumable earlier run); write or check the run's config. Returns the run id."""
    import ray

    storage = absolute(cfg.train.storage)
    check_writable(storage)
    check_writable(cfg.train.model_store)
    if not ray.is_initialized():
        raise RuntimeError("connect to Ray first (modelfoundry.cluster.connect)")
    check_capacity(cfg)
    bad = allow_changes - RESUME_SAFE
    if bad:
        raise ValueError(f"--allow-change {sorted(bad)}: only these may change on --resume: {sorted(RESUME_SAFE)}")
    existing = run_dirs(storage, cfg.name)
    if resume and not existing:
        raise ValueError(f"--resume: no earlier run of {cfg.name!r} under {storage}; nothing to resume")
    if resume:
        check_resume_config(join(storage, cfg.name, existing[-1]), cfg, allow_changes)
        return existing[-1]
    run_id = time.strftime("run-%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid() % 10000:04d}"
    write_run_config(join(storage, cfg.name, run_id), cfg)
    return run_id


def _relay():
    from modelfoundry.training.reports import ReportRelay

    return ReportRelay()


def _fit(cfg: JobConfig, splits, trainer, relay, run: RunContext, timeline: list):
    """The trainer's fit, its reports shown as a progress display and logged to MLflow, each change
    of the worker count appended to `timeline`; a failed run is one RuntimeError naming its root cause."""
    import ray.train

    from modelfoundry.console import EpochProgress
    from modelfoundry.training.reports import fit_reporting

    print(
        f"[{cfg.name}] training {cfg.model.family}/{cfg.model.preset} on {splits.spec.name} "
        f"({len(splits.x_train)} train / {len(splits.x_test)} test) with {workers_text(cfg)}"
        f"{' on GPU' if cfg.train.use_gpu else ''}; run {run.path}",
        flush=True,
    )

    t0 = time.time()

    def on_report(metrics: dict[str, Any]) -> None:
        progress.update(metrics)
        run.tracker.log_metrics(metrics, int(metrics.get("epoch", 0)))
        world = metrics.get("workers")
        if world and (not timeline or timeline[-1][1] != world):  # the first epoch at a new size
            if timeline:
                print(f"[{cfg.name}] workers {timeline[-1][1]} -> {world} at epoch {metrics['epoch']}", flush=True)
            timeline.append([round(max(0.0, metrics.get("started_at", t0) - t0), 1), world])

    try:
        with EpochProgress(cfg.name, cfg.train.epochs) as progress:
            return fit_reporting(trainer, relay, on_report)
    except ray.train.TrainingFailedError as err:
        raise RuntimeError(f"training run {cfg.name}/{run.run_id} failed: {_root_cause(err)}") from err


def _loop():
    from modelfoundry.training.loop import train_loop_per_worker

    return train_loop_per_worker


def _best(result, metric: str, mode: str):
    candidates = [(c, m) for c, m in (result.best_checkpoints or []) if metric in m]
    if not candidates:
        raise RuntimeError(f"the run reported no checkpoint with {metric}; see its log at {result.path}")
    pick = max if mode == "max" else min
    return pick(candidates, key=lambda cm: cm[1][metric])


def _root_cause(err: BaseException) -> str:
    text = str(err)
    for line in reversed(text.splitlines()):
        if "Error" in line or "Exception" in line:
            return line.strip()
    return text.strip().splitlines()[-1] if text.strip() else type(err).__name__
