"""A sweep's trial: a Tune function running the platform's one training loop, in the trial's own
process for one-worker trials (TuneSession: no TorchTrainer start-up) or as a TorchTrainer whose
every report reaches Tune with its checkpoint (training/reports.py); and what each trial reserves."""

from __future__ import annotations

import os
import time
from typing import Any

from modelfoundry.config import ConfigError, with_overrides
from modelfoundry.storage import join
from modelfoundry.tasks import task_of
from modelfoundry.tuning.sweep_config import SweepConfig, runs_in_process

TRIAL_DRIVER_CPUS = 0.1
# the splits of the last data config a trial process loaded (a reused actor runs the next trial)
_LAST_SPLITS: dict[str, Any] = {}


def trial_resources(sweep: SweepConfig) -> dict[str, float]:
    """What Tune reserves for one trial: an in-process trial holds its worker's resources; a
    TorchTrainer trial's driver holds a sliver (Tune rejects 0), its Train workers their own."""
    t = sweep.tune
    if runs_in_process(sweep):
        return {"cpu": t.cpus_per_worker, "gpu": t.gpus_per_worker}
    return {"cpu": TRIAL_DRIVER_CPUS}


def check_trial_resources(sweep: SweepConfig) -> int:
    """How many trials fit at once; a clear error when not even one fits the cluster."""
    import ray

    t = sweep.tune
    total = ray.cluster_resources()
    cpu_need = t.workers_per_trial * t.cpus_per_worker + (0.0 if runs_in_process(sweep) else TRIAL_DRIVER_CPUS)
    gpu_need = t.workers_per_trial * t.gpus_per_worker
    if cpu_need > total.get("CPU", 0) or gpu_need > total.get("GPU", 0):
        raise ConfigError(
            f"one trial needs {cpu_need:g} CPUs and {gpu_need:g} GPUs (tune.workers_per_trial={t.workers_per_trial}, "
            f"cpus_per_worker={t.cpus_per_worker}, gpus_per_worker={t.gpus_per_worker}); the cluster has "
            f"{total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs"
        )
    fit = int(total.get("CPU", 0) // cpu_need)
    if gpu_need:
        fit = min(fit, int(total.get("GPU", 0) // gpu_need))
    return max(1, min(fit, t.max_concurrent_trials or fit))


def trial_splits(data) -> Any:
    """The trial's dataset. A reused trial process keeps the last one it loaded: the next trial
    almost always asks for the same data (only a searched data.* field changes it)."""
    from modelfoundry.data import load_splits

    key = data.model_dump_json()
    if key not in _LAST_SPLITS:
        _LAST_SPLITS.clear()
        _LAST_SPLITS[key] = load_splits(data)
    return _LAST_SPLITS[key]


def make_trial(sweep: SweepConfig, trials_storage: str, teacher_path: str | None = None):
    """The Tune function trainable: sampled config -> job config -> TorchTrainer.fit().
    teacher_path: a compression sweep's teacher in the store (pareto.teacher_path)."""
    base = sweep.job
    paths = sweep.job_paths()
    t = sweep.tune
    in_process = runs_in_process(sweep)

    def trial(config: dict[str, Any]) -> None:
        from ray import tune

        from modelfoundry.training.loop import train_loop_per_worker
        from modelfoundry.training.plan import worker_plan
        from modelfoundry.training.reports import ReportRelay, fit_and_relay
        from modelfoundry.training.session import TuneSession
        from modelfoundry.training.trainer import make_trainer

        cfg = with_overrides(
            base,
            {
                **{p: config[p] for p in paths},
                "train.num_workers": t.workers_per_trial,
                "train.workers": None,  # a trial's size is fixed; Tune checkpoints it per report
                "train.checkpoint_every_steps": None,
                "train.cpus_per_worker": t.cpus_per_worker,
                "train.use_gpu": t.gpus_per_worker > 0,
                "train.max_failures": 0,
            },
        )
        run_name = f"{tune.get_context().get_trial_id()}-{time.strftime('%H%M%S')}-{os.urandom(2).hex()}"
        splits = trial_splits(cfg.data)
        if sweep.compress is not None:  # train, compress, measure: the objectives
            from modelfoundry.tuning.pareto import run_trial

            dims = sweep.compress.model_copy(
                update={p.removeprefix("compress."): config[p] for p in sweep.compress_paths()}
            )
            task = task_of(cfg.model.family, splits.spec.task)
            run_trial(cfg, dims, splits, join(trials_storage, run_name), teacher_path, task)
            return
        if in_process:
            run_path = join(trials_storage, run_name)
            train_loop_per_worker(worker_plan(cfg, splits, run_path), TuneSession(splits, cfg.train.use_gpu))
            return
        # a checkpoint from Tune: this trial's own (a resumed sweep) or another's (a PBT exploit)
        start = tune.get_checkpoint()
        relay = ReportRelay()
        trainer = make_trainer(
            cfg, splits, trials_storage, run_name, callbacks=[relay], start_from=start and start.path
        )
        fit_and_relay(trainer, relay)

    return trial
