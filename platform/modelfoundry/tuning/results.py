"""What a finished (or interrupted) sweep's results say: its trials, the best one and its best
checkpoint, as an Outcome; or why it stopped early."""

from __future__ import annotations

import os
from typing import Any

from modelfoundry.runs import Outcome
from modelfoundry.storage import checkpoint_location
from modelfoundry.tuning.sweep_config import SweepConfig


def interrupted_message(sweep: SweepConfig, results, metric: str, exp_path: str) -> str:
    finished = [r for r in results if r.error is None and r.config and (r.metrics or {}).get("done")]
    lines = [f"sweep {sweep.name} stopped with {len(finished)} of {len(results)} trial(s) finished ({exp_path})"]
    for r in finished:
        lines.append(f"  finished: { ({k: r.config.get(k) for k in sweep.search}) } {metric}={r.metrics.get(metric)}")
    return "\n".join(lines)


def summarize(sweep: SweepConfig, results, metric: str, mode: str, exp_path: str) -> Outcome:
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
    details = {
        "best_config": {k: best[k] for k in sweep.search},
        "best_metric": best["best_" + metric],
        "best_trial": best["trial_id"],  # the best trial's directory name
        "total_epochs": sum(t["epochs"] for t in trials),
    }
    return Outcome(
        "sweep",
        sweep.name,
        exp_path,
        metric,
        mode,
        metrics={metric: best["best_" + metric]},
        checkpoint=_best_checkpoint(best, metric, mode),
        trials=trials,
        details=details,
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
