"""Run a sweep with Ray Tune. Every trial is a Tune function running the platform's one
training loop (tuning/trial.py); the Tuner, its scheduler and search (tuning/tuner.py) see each
epoch (ASHA), exploit checkpoints (PBT), and --resume restarts unfinished trials from their last
one; the results become an Outcome (tuning/results.py), its best exported with its lineage.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs

from modelfoundry.config import ConfigError, dump_config, with_overrides
from modelfoundry.runs import Outcome, RunContext
from modelfoundry.storage import absolute, check_writable, filesystem, join
from modelfoundry.tasks import task_of, task_spec
from modelfoundry.tuning.results import interrupted_message, summarize
from modelfoundry.tuning.sweep_config import SweepConfig
from modelfoundry.tuning.tuner import _tune_output, make_tuner


class SweepInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) stopped the sweep; Tune saved its state, so --resume continues it."""

    exit_code = 130


def metric_and_mode(sweep: SweepConfig, task: str) -> tuple[str, str]:
    spec = task_spec(task)
    metric = sweep.tune.metric or spec.metric
    if metric not in spec.metrics:
        raise ConfigError(f"tune.metric {metric!r} is not reported by a {task} run; choose one of {list(spec.metrics)}")
    return metric, spec.metrics[metric]  # its direction, from the task (never guessed from its name)


_LAST_SPLITS: dict[str, Any] = {}


def sweep_dirs(storage: str, name: str) -> list[str]:
    fs, root = filesystem(join(absolute(storage), name))
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("sweep-"))


def run_sweep(
    sweep: SweepConfig,
    *,
    resume: bool = False,
    export: bool = True,
    verbose: bool = False,
    tracking_uri: str | None = None,
) -> Outcome:
    """Run the sweep; an Outcome of kind "sweep", or "pareto" for a compression sweep.
    verbose: Tune's own status tables too (else the one console.TrialProgress display).
    Tracked in MLflow (modelfoundry.tracking): the sweep a parent run, each trial a child run."""
    import ray

    from modelfoundry.console import TrialProgress
    from modelfoundry.data import load_splits

    splits = load_splits(sweep.job.data)
    task = task_of(sweep.job.model.family, splits.spec.task)
    metric, mode = metric_and_mode(sweep, task)
    objs, teacher = None, None
    if sweep.compress is not None:  # a missing or unfit teacher fails here, before any trial
        from modelfoundry.tuning import pareto

        objs = pareto.objectives(sweep, metric, mode)
        teacher = pareto.teacher_path(sweep, task, splits.spec.input_shape)
    storage = absolute(sweep.job.train.storage)
    check_writable(storage)
    if not ray.is_initialized():
        raise RuntimeError("connect to Ray first (modelfoundry.cluster.connect)")
    existing = sweep_dirs(storage, sweep.name)
    if resume and not existing:
        raise ValueError(f"--resume: no earlier sweep {sweep.name!r} under {storage}; nothing to resume")
    exp_name = existing[-1] if resume else time.strftime("sweep-%Y%m%d-%H%M%S", time.gmtime())
    expected = sweep.tune.num_samples * math.prod(len(s["grid"]) for s in sweep.search.values() if "grid" in s)
    # the trials as they finish (a restored Tuner keeps the first run's callbacks: Tune's tables)
    progress = TrialProgress(sweep.name, expected, None if objs else metric, mode, sweep.job.train.epochs)
    params = {"job": sweep.job.to_dict(), "search": sweep.search, "tune": sweep.tune.model_dump(mode="json")}
    exp_path = join(storage, sweep.name, exp_name)
    tags = {"foundry.sweep_path": exp_path, "foundry.resumed": str(resume)}
    kind = "pareto" if objs else "sweep"
    with RunContext(
        kind, sweep.name, exp_name, storage, sweep.job.train.model_store,
        params=params, tags=tags, tracking_uri=tracking_uri,
    ) as run:  # fmt: skip
        # a restored Tuner keeps the first run's callbacks: a resumed sweep's trials are not re-tracked
        trials_cb = None if resume else _trial_callback(run.tracker)
        callbacks = [progress.callback, *([trials_cb] if trials_cb else [])]
        tuner = make_tuner(sweep, run, teacher, resume, verbose, callbacks, metric, mode, objs)
        with progress if not resume else contextlib.nullcontext(), _tune_output(verbose):
            results = tuner.fit()  # on Ctrl-C Tune stops the trials, saves the sweep state and returns
        if len(results) < expected or results.num_terminated + results.num_errors < len(results):
            run.end("KILLED")
            raise SweepInterrupted(interrupted_message(sweep, results, metric, exp_path))
        links = _lineage_links(sweep, run, trials_cb)
        outcome = (
            _pareto(sweep, results, objs, run, links if export else None)
            if objs
            else _best_of(sweep, results, metric, mode, run, links if export else None)
        )
    return run.finish(outcome)


def _trial_callback(tracker):
    from modelfoundry.tuning.mlflow_trials import trial_callback  # imports mlflow: only when a sweep runs

    return trial_callback(tracker)


def _lineage_links(sweep: SweepConfig, run: RunContext, trials_cb) -> Callable[[str], dict[str, Any]]:
    """The lineage links of a version exported from trial `trial_id`: the sweep and the trial."""

    def links(trial_id: str) -> dict[str, Any]:
        trial_run = (trials_cb.runs if trials_cb else {}).get(trial_id)
        return {
            "sweep": {"name": sweep.name, "path": run.path, "tracking_run_id": run.tracker.run_id},
            "trial": {"id": trial_id, "tracking_run_id": trial_run},
        }

    return links


def _best_of(sweep: SweepConfig, results, metric: str, mode: str, run: RunContext, links) -> Outcome:
    """The sweep's best trial, its best checkpoint exported (when `links`), and its reports."""
    from modelfoundry.tuning.report import write_reports

    outcome = summarize(sweep, results, metric, mode, run.path)
    best_config = outcome.details["best_config"]
    run.tracker.log_metrics({f"best_{metric}": outcome.details["best_metric"]}, 0)
    if links and outcome.checkpoint:
        config = with_overrides(sweep.job, best_config).to_dict()
        outcome.model = run.export(outcome.checkpoint, sweep.name, config, **links(outcome.details["best_trial"]))
    outcome.files = write_reports(outcome, dump_config(with_overrides(sweep.job, best_config)))
    return outcome


def _pareto(sweep: SweepConfig, results, objs, run: RunContext, links) -> Outcome:
    """A compression sweep's Pareto front, its members exported as <sweep>-front (when `links`)."""
    from modelfoundry.tuning import pareto

    def export(row: dict[str, Any]) -> dict[str, Any]:
        config = with_overrides(sweep.job, {k: row[k] for k in sweep.job_paths()}).to_dict()
        extra = {"objectives": {n: row[n] for n, _ in objs}, "sweep": sweep.name}
        return run.export(
            row["checkpoint_path"],
            f"{sweep.name}-front",
            config,
            extra,
            **links(row["trial_id"]),
            compression=row.get("compression"),
        )

    return pareto.finish(sweep, results, objs, run, export if links else None)
