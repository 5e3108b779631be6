"""A sweep's trials as MLflow child runs of the sweep's run: Ray Tune's MLflowLoggerCallback made
tolerant (an MLflow failure warns and stops tracking; it never ends the sweep)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

from modelfoundry.tracking import Tracker, flat_params


class TolerantMLflowLoggerCallback(MLflowLoggerCallback):
    """Ray Tune's MLflowLoggerCallback, each trial a child run of the sweep's `parent` run (the
    parent tag), with two changes: an MLflow failure warns and stops tracking instead of failing
    the sweep (Ray's raises from setup and from every log call, and Tune ends the sweep on a
    callback's error), and `runs` maps each trial's directory name to its run id (the exported
    version's lineage names the best trial's run)."""

    def __init__(self, parent: Tracker) -> None:
        super().__init__(
            tracking_uri=parent.uri,
            registry_uri=parent.uri,
            experiment_name=parent.experiment,
            tags={"mlflow.parentRunId": parent.run_id, "foundry.kind": "trial"},
        )
        self.parent = parent
        self.runs: dict[str, str] = {}

    def _guarded(self, what: str, fn: Callable[[], Any]) -> None:
        self.parent._call(f"{what} (Tune callback)", fn)

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self.runs = {}
        # mlflow.set_tracking_uri (which Ray's setup calls) also exports MLFLOW_TRACKING_URI to
        # this process's environment: a later run in the process would follow it silently
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        try:
            self._guarded("connecting", lambda: MLflowLoggerCallback.setup(self, *args, **kwargs))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def log_trial_start(self, trial: Any) -> None:
        def go() -> None:
            if trial in self._trial_runs:  # restarted (PBT: with a mutated config)
                self._log_restart(trial)
                return
            MLflowLoggerCallback.log_trial_start(self, trial)
            self.runs[os.path.basename(trial.path)] = self._trial_runs[trial]

        self._guarded("starting a trial's run", go)

    def _log_restart(self, trial: Any) -> None:
        """MLflow params are write-once: a config PBT mutated goes in as metrics (the numbers, at
        the trial's iteration, so the schedule shows) and tags (the latest)."""
        run_id = self._trial_runs[trial]
        step = int((trial.last_result or {}).get("training_iteration", 0))
        config = flat_params(trial.config)
        self.parent.client.log_batch(
            run_id,
            metrics=[_metric(f"config.{k}", v, step) for k, v in config.items() if _is_number(v)],
            tags=[_tag(f"config.{k}", v) for k, v in config.items()],
        )

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        self._guarded(
            "logging a trial's result", lambda: MLflowLoggerCallback.log_trial_result(self, iteration, trial, result)
        )

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        self._guarded("ending a trial's run", lambda: MLflowLoggerCallback.log_trial_end(self, trial, failed))


def trial_callback(parent: Tracker) -> TolerantMLflowLoggerCallback | None:
    """The sweep's trial callback; None when the sweep's run is not tracked."""
    if not parent.enabled or parent.run_id is None:
        return None
    return TolerantMLflowLoggerCallback(parent)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return text not in ("True", "False")


def _metric(key: str, value: str, step: int):
    from mlflow.entities import Metric

    return Metric(key, float(value), int(time.time() * 1000), step)


def _tag(key: str, value: str):
    from mlflow.entities import RunTag

    return RunTag(key, value)
