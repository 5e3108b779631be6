"""Run a sweep with Ray Tune. Every trial is a Tune function running the platform's one
training loop: one-worker trials run it in the trial's own process (TuneSession: no TorchTrainer
start-up), larger trials fit a TorchTrainer whose every report reaches Tune with its checkpoint
(training/reports.py). Either way ASHA sees each epoch, PBT exploits checkpoints, and --resume
restarts unfinished trials from their last one.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from modelfoundry import tracking
from modelfoundry.config import ConfigError, dump_config, with_overrides
from modelfoundry.storage import absolute, check_writable, checkpoint_location, filesystem, join
from modelfoundry.tasks import task_of, task_spec
from modelfoundry.tuning.sweep_config import SweepConfig, pbt_mutable, runs_in_process

TRIAL_DRIVER_CPUS = 0.1


class SweepInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) stopped the sweep; Tune saved its state, so --resume continues it."""

    exit_code = 130


@dataclass
class SweepOutcome:
    name: str
    path: str
    metric: str
    mode: str
    best_config: dict[str, Any]
    best_metric: float
    trials: list[dict[str, Any]]
    total_epochs: int
    model: dict[str, Any] | None = None
    files: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    best_trial: str | None = None  # the best trial's directory name
    tracking_run_id: str | None = None  # the sweep's MLflow run (its trials are child runs)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "metric": self.metric,
            "mode": self.mode,
            "best_config": self.best_config,
            "best_metric": self.best_metric,
            "trials": len(self.trials),
            "stopped_early": sum(t["stopped_early"] for t in self.trials),
            "epochs_total": self.total_epochs,
            "model_store": {k: self.model[k] for k in ("name", "version", "path")} if self.model else None,
            "files": self.files,
            "best_trial": self.best_trial,
            "tracking_run_id": self.tracking_run_id,
            "wall_s": round(self.wall_s, 1),
        }


def metric_and_mode(sweep: SweepConfig, task: str) -> tuple[str, str]:
    spec = task_spec(task)
    default_metric, mode = spec.metric, spec.mode
    metric = sweep.tune.metric or default_metric
    if metric not in spec.metrics:
        raise ConfigError(f"tune.metric {metric!r} is not reported by a {task} run; choose one of {list(spec.metrics)}")
    if metric.endswith(("loss", "mae", "elbo", "recon", "kl")):
        mode = "min"
    elif metric.endswith("accuracy"):
        mode = "max"
    return metric, mode


def search_space(sweep: SweepConfig) -> dict[str, Any]:
    from ray import tune

    space = {}
    for path, spec in sweep.search.items():
        kind, v = next(iter(spec.items()))
        space[path] = {
            "choice": lambda v: tune.choice(v),
            "grid": lambda v: tune.grid_search(v),
            "uniform": lambda v: tune.uniform(*v),
            "loguniform": lambda v: tune.loguniform(*v),
            "randint": lambda v: tune.randint(*v),
        }[kind](v)
    return space


def make_scheduler(sweep: SweepConfig):
    from ray import tune

    t, max_t = sweep.tune, sweep.job.train.epochs
    if t.scheduler == "asha":
        return tune.schedulers.ASHAScheduler(
            time_attr="epoch", max_t=max_t, grace_period=min(t.grace_period, max_t), reduction_factor=t.reduction_factor
        )
    if t.scheduler == "pbt":
        space = search_space(sweep)
        return tune.schedulers.PopulationBasedTraining(
            time_attr="epoch",
            perturbation_interval=t.perturbation_interval,
            hyperparam_mutations={p: space[p] for p in pbt_mutable(sweep.search)},
            quantile_fraction=t.quantile_fraction,
            synch=t.synch,
        )
    return tune.schedulers.FIFOScheduler()


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


_LAST_SPLITS: dict[str, Any] = {}


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

        from modelfoundry.training.loop import TuneSession, train_loop_per_worker
        from modelfoundry.training.plan import worker_plan
        from modelfoundry.training.reports import ReportRelay, fit_and_relay
        from modelfoundry.training.trainer import make_trainer

        cfg = with_overrides(
            base,
            {
                **{p: config[p] for p in paths},
                "train.num_workers": t.workers_per_trial,
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
):
    """Run the sweep; a SweepOutcome, or a pareto.ParetoOutcome for a compression sweep.
    verbose: Tune's own status tables too (else the one console.TrialProgress display).
    Tracked in MLflow (modelfoundry.tracking): the sweep a parent run, each trial a child run."""
    import ray
    from ray import tune

    from modelfoundry import store
    from modelfoundry.console import TrialProgress
    from modelfoundry.data import load_splits
    from modelfoundry.tuning.report import write_reports

    t_start = time.perf_counter()
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
    concurrent = check_trial_resources(sweep)

    existing = sweep_dirs(storage, sweep.name)
    if resume and not existing:
        raise ValueError(f"--resume: no earlier sweep {sweep.name!r} under {storage}; nothing to resume")
    exp_name = existing[-1] if resume else time.strftime("sweep-%Y%m%d-%H%M%S", time.gmtime())
    exp_path = join(storage, sweep.name, exp_name)
    t = sweep.tune
    trainable = tune.with_resources(make_trial(sweep, join(exp_path, "train"), teacher), trial_resources(sweep))
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    expected = t.num_samples * math.prod(len(s["grid"]) for s in sweep.search.values() if "grid" in s)
    # the trials as they finish (a restored Tuner keeps the first run's callbacks: Tune's tables)
    progress = TrialProgress(sweep.name, expected, None if objs else metric, mode, sweep.job.train.epochs)
    tracker = tracking.Tracker(tracking.tracking_uri(storage, tracking_uri), sweep.name)
    tracker.start(
        exp_name,
        {"job": sweep.job.to_dict(), "search": sweep.search, "tune": sweep.tune.model_dump(mode="json")},
        {"foundry.kind": "sweep", "foundry.sweep_path": exp_path, "foundry.resumed": str(resume)},
    )
    # a restored Tuner keeps the first run's callbacks: a resumed sweep's trials are not re-tracked
    trials_cb = None if resume else tracking.trial_callback(tracker)

    if resume:
        if not tune.Tuner.can_restore(exp_path):
            raise ValueError(f"--resume: {exp_path} holds no restorable sweep state")
        print(f"[{sweep.name}] resuming sweep {exp_path}", flush=True)
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = make_scheduler(sweep)
        # seeded: the same sweep samples the same configs (ASHA vs FIFO compare like for like).
        # It takes the concurrency limit itself: Tune ignores max_concurrent_trials for it.
        search_alg = tune.search.BasicVariantGenerator(random_state=t.seed, max_concurrent=concurrent)
        if t.searcher == "optuna":
            try:
                import optuna
                from ray.tune.search.optuna import OptunaSearch
            except ImportError:
                raise ConfigError(
                    "tune.searcher optuna needs the tune extra: pip install 'modelfoundry[tune]'"
                ) from None
            if any("grid" in s for s in sweep.search.values()):
                raise ConfigError("tune.searcher optuna cannot take grid distributions; use choice")

            search_alg = OptunaSearch(sampler=optuna.samplers.TPESampler(seed=t.seed))
        if objs and t.searcher != "random":  # several objectives at once: NSGA-II, or TPE's multi-objective mode
            try:
                import optuna
                from ray.tune.search.optuna import OptunaSearch
            except ImportError:
                raise ConfigError(
                    f"tune.searcher {t.searcher} needs the tune extra: pip install 'modelfoundry[tune]'"
                ) from None

            if any("grid" in s for s in sweep.search.values()):
                raise ConfigError("a compression sweep's searcher cannot take grid distributions; use choice")
            sampler = (
                optuna.samplers.NSGAIISampler(seed=t.seed, population_size=max(2, min(t.num_samples // 2, 50)))
                if t.searcher == "nsga2"
                else optuna.samplers.TPESampler(seed=t.seed)
            )
            search_alg = tune.search.ConcurrencyLimiter(
                OptunaSearch(sampler=sampler, metric=[n for n, _ in objs], mode=[m for _, m in objs]),
                max_concurrent=concurrent,
            )
        goal = ", ".join(f"{n} ({m})" for n, m in objs) if objs else f"{metric} ({mode})"
        print(
            f"[{sweep.name}] {t.num_samples} sample(s) over {list(sweep.search)}; {t.scheduler} + {t.searcher}; "
            f"{concurrent} trial(s) at once; optimising {goal}; {exp_path}",
            flush=True,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(sweep),
            tune_config=tune.TuneConfig(
                metric=None if objs else metric,
                mode=None if objs else mode,
                scheduler=scheduler,
                search_alg=search_alg,
                num_samples=t.num_samples,
                # BasicVariantGenerator takes the limit itself (above); Tune warns when given both
                max_concurrent_trials=None if isinstance(search_alg, tune.search.BasicVariantGenerator) else concurrent,
                # in-process trials: a finished trial's process runs the next one (no new worker,
                # no torch/Ray Train imports: ~4 s a trial on this machine). Not TorchTrainer
                # trials: a stopped one's Train run must end with its actor, or it holds workers
                reuse_actors=runs_in_process(sweep),
            ),
            run_config=tune.RunConfig(
                name=exp_name,
                storage_path=join(storage, sweep.name),
                verbose=1 if verbose else 0,  # else console.TrialProgress's one display
                callbacks=[progress.callback, *([trials_cb] if trials_cb else [])],
                # Tune keeps a trial's best 4 checkpoints and always its latest (what resume and
                # PBT use). Keeping K forces a sweep-state snapshot every K checkpoints of a
                # trial, which Tune warns about on every fast epoch: silenced above
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=4,
                    checkpoint_score_attribute=None if objs else metric,
                    checkpoint_score_order=mode,
                ),
            ),
        )
    try:
        with progress if not resume else contextlib.nullcontext(), _tune_output(verbose):
            results = tuner.fit()  # on Ctrl-C Tune stops the trials, saves the sweep state and returns
    except BaseException:
        tracker.end("FAILED")
        raise
    if len(results) < expected or results.num_terminated + results.num_errors < len(results):
        tracker.end("KILLED")
        raise SweepInterrupted(interrupted_message(sweep, results, metric, exp_path))
    if objs:
        from modelfoundry.tuning import pareto

        store_dir = absolute(sweep.job.train.model_store) if export else None

        def member_lineage(row: dict[str, Any]) -> dict[str, Any]:
            return store.lineage_record(
                with_overrides(sweep.job, {k: row[k] for k in sweep.job_paths()}).to_dict(),
                sweep={"name": sweep.name, "path": exp_path, "tracking_run_id": tracker.run_id},
                trial={
                    "id": row["trial_id"],
                    "tracking_run_id": (trials_cb.runs if trials_cb else {}).get(row["trial_id"]),
                },
                compression=row.get("compression"),
                tracking_run_id=tracker.run_id,
            )

        front = pareto.finish(sweep, results, objs, exp_path, store_dir, t_start, member_lineage)
        for f in front.files:
            tracker.log_artifact(f, "sweep")
        tracker.end()
        if front.models:
            tracking.mirror_registry(tracker.uri if tracker.enabled else None, store_dir, f"{sweep.name}-front")
        return front
    outcome = summarize(sweep, results, metric, mode, exp_path)
    best_ckpt = outcome.best_config.pop("_checkpoint_path")
    tracker.log_metrics({f"best_{metric}": outcome.best_metric}, 0)
    if export and best_ckpt:
        best_trial = outcome.best_trial
        record = store.lineage_record(
            with_overrides(sweep.job, outcome.best_config).to_dict(),
            sweep={"name": sweep.name, "path": exp_path, "tracking_run_id": tracker.run_id},
            trial={"id": best_trial, "tracking_run_id": (trials_cb.runs if trials_cb else {}).get(best_trial)},
            tracking_run_id=tracker.run_id,
        )
        outcome.model = store.export(best_ckpt, absolute(sweep.job.train.model_store), sweep.name, {"lineage": record})
    outcome.files = write_reports(outcome, dump_config(with_overrides(sweep.job, outcome.best_config)))
    for f in outcome.files:
        tracker.log_artifact(f, "sweep")
    tracking.log_model_entry(tracker, outcome.model)
    tracker.end()
    outcome.tracking_run_id = tracker.run_id
    if outcome.model:
        tracking.mirror_registry(tracker.uri if tracker.enabled else None, sweep.job.train.model_store, sweep.name)
    outcome.wall_s = time.perf_counter() - t_start
    return outcome


@contextlib.contextmanager
def _tune_output(verbose: bool):
    """Tune's console output (its experiment banner and status tables) only with --verbose: its
    newer output engine prints the banner at any verbosity, the legacy one at verbose=0 nothing."""
    old = os.environ.get("RAY_AIR_NEW_OUTPUT")
    if not verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old


def interrupted_message(sweep: SweepConfig, results, metric: str, exp_path: str) -> str:
    finished = [r for r in results if r.error is None and r.config and (r.metrics or {}).get("done")]
    lines = [f"sweep {sweep.name} stopped with {len(finished)} of {len(results)} trial(s) finished ({exp_path})"]
    for r in finished:
        lines.append(f"  finished: { ({k: r.config.get(k) for k in sweep.search}) } {metric}={r.metrics.get(metric)}")
    return "\n".join(lines)


def summarize(sweep: SweepConfig, results, metric: str, mode: str, exp_path: str) -> SweepOutcome:
    max_epochs = sweep.job.train.epochs
    trials = []
    for r in results:
        df = r.metrics_dataframe
        history = [] if df is None or metric not in df else df[["epoch", metric]].dropna().values.tolist()
        last = r.metrics or {}
        epochs = int(last.get("epoch", 0) or 0)
        if not history and last.get(metric) is not None:
            # a trial paused by synchronous PBT restarts its result log: its last result remains
            history = [[epochs, last[metric]]]
        trials.append(
            {
                "trial_id": os.path.basename(r.path),
                **{k: (r.config or {}).get(k) for k in sweep.search},
                metric: last.get(metric),
                "best_" + metric: (max if mode == "max" else min)(v for _, v in history) if history else None,
                "epochs": epochs,
                "stopped_early": r.error is None and 0 < epochs < max_epochs,
                "error": str(r.error).splitlines()[0] if r.error else None,
                "history": history,
                # a TorchTrainer trial's own checkpoint (relayed), else Tune's copy
                "checkpoint_path": last.get("checkpoint_path")
                or (checkpoint_location(r.checkpoint) if r.checkpoint else None),
            }
        )
    ok = [t for t in trials if t["best_" + metric] is not None]
    if not ok:
        raise RuntimeError(f"no trial of {sweep.name} reported {metric}; see {exp_path}")
    best = (max if mode == "max" else min)(ok, key=lambda t: t["best_" + metric])
    best_cfg = {k: best[k] for k in sweep.search}
    best_cfg["_checkpoint_path"] = _best_checkpoint(best, metric, mode)
    return SweepOutcome(
        sweep.name,
        exp_path,
        metric,
        mode,
        best_cfg,
        best["best_" + metric],
        trials,
        sum(t["epochs"] for t in trials),
        best_trial=best["trial_id"],
    )


def _best_checkpoint(trial: dict[str, Any], metric: str, mode: str) -> str | None:
    """The best-scoring kept checkpoint of a trial (each holds its metrics in model.json)."""
    from modelfoundry.store.checkpoint import run_checkpoints

    last = trial["checkpoint_path"]
    if not last:
        return None
    best, best_value = last, None
    for location, meta in run_checkpoints(last.rsplit("/", 1)[0]):
        value = meta.metrics.get(metric)
        if value is not None and (best_value is None or (value > best_value if mode == "max" else value < best_value)):
            best, best_value = location, value
    return best
