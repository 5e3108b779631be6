"""The Tuner of a sweep: its search space, scheduler (ASHA, PBT, FIFO) and search algorithm
(seeded random/grid, Optuna TPE, NSGA-II for a compression sweep's objectives), or the restored
Tuner of an earlier sweep (--resume)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from modelfoundry.config import ConfigError
from modelfoundry.runs import RunContext
from modelfoundry.storage import join
from modelfoundry.tuning.sweep_config import SweepConfig, pbt_mutable, runs_in_process
from modelfoundry.tuning.trial import check_trial_resources, make_trial, trial_resources


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


def make_tuner(
    sweep: SweepConfig, run: RunContext, teacher, resume: bool, verbose: bool, callbacks, metric, mode, objs
):
    """The Tuner of a new sweep, or the restored one of `run`'s earlier sweep (--resume)."""
    from ray import tune

    concurrent = check_trial_resources(sweep)
    trainable = tune.with_resources(make_trial(sweep, join(run.path, "train"), teacher), trial_resources(sweep))
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume:
        if not tune.Tuner.can_restore(run.path):
            raise ValueError(f"--resume: {run.path} holds no restorable sweep state")
        print(f"[{sweep.name}] resuming sweep {run.path}", flush=True)
        return tune.Tuner.restore(run.path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    t = sweep.tune
    search_alg = make_search(sweep, objs, concurrent)
    goal = ", ".join(f"{n} ({m})" for n, m in objs) if objs else f"{metric} ({mode})"
    print(
        f"[{sweep.name}] {t.num_samples} sample(s) over {list(sweep.search)}; {t.scheduler} + {t.searcher}; "
        f"{concurrent} trial(s) at once; optimising {goal}; {run.path}",
        flush=True,
    )
    return tune.Tuner(
        trainable,
        param_space=search_space(sweep),
        tune_config=tune.TuneConfig(
            metric=None if objs else metric,
            mode=None if objs else mode,
            scheduler=make_scheduler(sweep),
            search_alg=search_alg,
            num_samples=t.num_samples,
            # BasicVariantGenerator takes the limit itself (make_search); Tune warns when given both
            max_concurrent_trials=None if isinstance(search_alg, tune.search.BasicVariantGenerator) else concurrent,
            # in-process trials: a finished trial's process runs the next one (no new worker,
            # no torch/Ray Train imports: ~4 s a trial on this machine). Not TorchTrainer
            # trials: a stopped one's Train run must end with its actor, or it holds workers
            reuse_actors=runs_in_process(sweep),
        ),
        run_config=tune.RunConfig(
            name=run.run_id,
            storage_path=join(run.storage, sweep.name),
            verbose=1 if verbose else 0,  # else console.TrialProgress's one display
            callbacks=callbacks,
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


def make_search(sweep: SweepConfig, objs, concurrent: int):
    """The search algorithm: seeded random/grid (the same sweep samples the same configs: ASHA vs
    FIFO compare like for like; it takes the concurrency limit itself), Optuna's TPE, or for a
    compression sweep's several objectives NSGA-II or TPE's multi-objective mode."""
    from ray import tune

    t = sweep.tune
    if objs and t.searcher != "random":
        optuna, search = _optuna(t.searcher)
        if any("grid" in s for s in sweep.search.values()):
            raise ConfigError("a compression sweep's searcher cannot take grid distributions; use choice")
        sampler = (
            optuna.samplers.NSGAIISampler(seed=t.seed, population_size=max(2, min(t.num_samples // 2, 50)))
            if t.searcher == "nsga2"
            else optuna.samplers.TPESampler(seed=t.seed)
        )
        return tune.search.ConcurrencyLimiter(
            search(sampler=sampler, metric=[n for n, _ in objs], mode=[m for _, m in objs]), max_concurrent=concurrent
        )
    if t.searcher == "optuna":
        optuna, search = _optuna(t.searcher)
        if any("grid" in s for s in sweep.search.values()):
            raise ConfigError("tune.searcher optuna cannot take grid distributions; use choice")
        return search(sampler=optuna.samplers.TPESampler(seed=t.seed))
    return tune.search.BasicVariantGenerator(random_state=t.seed, max_concurrent=concurrent)


def _optuna(searcher: str):
    try:
        import optuna
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ConfigError(f"tune.searcher {searcher} needs the tune extra: pip install 'modelfoundry[tune]'") from None
    return optuna, OptunaSearch


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
