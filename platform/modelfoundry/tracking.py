"""Experiment tracking in MLflow, and the MLflow Model Registry as a mirror of the model store.

Every `foundry train`, `tune` and `compress` run is an MLflow run: the job config as params, the
per-epoch metrics, the plots and the exported model as artifacts; a sweep is a parent run with a
child run per trial. Where it goes: `--tracking-uri`, else $MLFLOW_TRACKING_URI, else a local
store beside the runs (sqlite:///<run storage>/mlflow.db, artifacts in <run storage>/mlartifacts)
that `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db` opens with no server running.

Logging happens in the driver: Ray Train's per-epoch reports already reach it (training.reports),
so the workers need no route to the tracking server. Sweeps use Ray Tune's MLflowLoggerCallback
(one run per trial, tagged as children of the sweep's run), made tolerant below.

Tracking never costs a run: the first MLflow call that fails (server down, disk full) prints one
warning and turns tracking off for the rest of the run; training, export and serving go on.

The model store is the source of truth for versions and aliases (it lives with the weights, on the
same storage, under the same sha256 contract); `mirror_registry` copies them into the MLflow
registry, where each MLflow model version carries the store's version in the tag
`foundry.version`, so both views agree even when their version numbers differ.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelfoundry.config_flat import flatten
from modelfoundry.storage import absolute, is_uri

LOCAL_DB = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
VERSION_TAG = "foundry.version"
# an unreachable server: a few seconds of retries, then tracking turns off (MLflow's own default
# retries for minutes, during which the run would wait). Values the user set are kept.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def tracking_uri(storage: str, explicit: str | None = None) -> str | None:
    """Where runs go: the explicit URI, $MLFLOW_TRACKING_URI, else a sqlite store under a local run
    storage (None, tracking off, for a URI run storage without a tracking server: sqlite cannot
    live in an object store)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if is_uri(storage):
        print(
            f"[tracking] run storage {storage} is not a local path: no local MLflow store; "
            "pass --tracking-uri or set MLFLOW_TRACKING_URI to track runs",
            flush=True,
        )
        return None
    root = Path(absolute(storage))
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / LOCAL_DB}"


def registry_uri(explicit: str | None = None, storage: str = "runs") -> str | None:
    """Where `foundry models alias` mirrors to: the explicit URI, $MLFLOW_TRACKING_URI, else the
    local store of the default run storage when it exists (None: no mirror)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    db = Path(absolute(storage)) / LOCAL_DB
    return f"sqlite:///{db}" if db.is_file() else None


def _artifact_root(uri: str) -> str | None:
    """Artifacts of the local sqlite store beside it (MLflow's default is ./mlruns of the cwd)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / LOCAL_ARTIFACTS).as_uri()
    return None


def quiet_mlflow() -> None:
    """MLflow's INFO lines (creating a store's tables, its alembic migrations) stay out of the
    console unless a logging level was set for them."""
    import logging

    for name in ("mlflow.store.db.utils", "alembic"):  # MLflow sets its own root logger to INFO at import
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.WARNING)


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, values as text (MLflow's 6,000-char cap)."""
    return {k: (json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:6000] for k, v in flatten(config).items()}


NOT_METRICS = {"epoch", "started_at", "attempt"}  # the step, a timestamp, a restart count


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_METRICS
    }


class Tracker:
    """One MLflow run, logged from the driver; every call is safe (see the module docstring)."""

    def __init__(self, uri: str | None, experiment: str) -> None:
        self.uri = uri
        self.experiment = experiment
        self.run_id: str | None = None
        self.client = None
        self.enabled = uri is not None

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        if not self.enabled:
            return None
        try:
            return fn()
        except Exception as err:  # noqa: BLE001  (tracking must never end a run)
            self.enabled = False
            warnings.warn(
                f"MLflow tracking at {self.uri} failed while {what} ({type(err).__name__}: {str(err)[:300]}); "
                "the run goes on without tracking",
                RuntimeWarning,
                stacklevel=2,
            )
            print(
                f"[tracking] warning: MLflow at {self.uri} failed while {what}; the run goes on untracked", flush=True
            )
            return None

    def start(
        self, run_name: str, params: dict[str, Any], tags: dict[str, str] | None = None, parent: str | None = None
    ) -> str | None:
        def go() -> str:
            for k, v in HTTP_DEFAULTS.items():
                os.environ.setdefault(k, v)
            quiet_mlflow()
            from mlflow import MlflowClient

            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            exp = self.client.get_experiment_by_name(self.experiment)
            exp_id = (
                exp.experiment_id
                if exp
                else self.client.create_experiment(self.experiment, artifact_location=_artifact_root(self.uri))
            )
            all_tags = {**(tags or {}), **({"mlflow.parentRunId": parent} if parent else {})}
            run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
            self.run_id = run.info.run_id
            self._log_params(params)
            print(f"[{self.experiment}] tracking in MLflow: {self.uri} (run {self.run_id})", flush=True)
            return self.run_id

        return self._call("starting a run", go)

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flat_params(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        def go() -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            values = [Metric(k, v, now, step) for k, v in numeric(metrics).items()]
            if values:
                self.client.log_batch(self.run_id, metrics=values)

        self._call("logging metrics", go)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._call("tagging the run", lambda: [self.client.set_tag(self.run_id, k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        """A local file or directory (a URI location is skipped: MLflow uploads from local paths)."""
        if is_uri(path) or not Path(path).exists():
            return
        log = self.client.log_artifacts if Path(path).is_dir() else self.client.log_artifact
        self._call(f"uploading {path}", lambda: log(self.run_id, path, artifact_path))

    def end(self, status: str = "FINISHED") -> None:
        self._call("ending the run", lambda: self.client.set_terminated(self.run_id, status))

    def run_url(self) -> str | None:
        return f"{self.uri} experiment {self.experiment!r} run {self.run_id}" if self.run_id else None


def log_model_entry(tracker: Tracker, entry: dict[str, Any] | None) -> None:
    """The exported model-store version as the run's `model` artifact (model.pt and model.json)."""
    if entry:
        tracker.log_artifact(entry["path"], "model")
        tracker.set_tags({"foundry.model": entry["name"], VERSION_TAG: entry["version"]})


def mirror_registry(uri: str | None, store: str, name: str) -> dict[str, Any] | None:
    """Copy `name`'s store versions and aliases into the MLflow Model Registry at `uri`: a store
    version missing there becomes an MLflow model version (source: the store path; tag
    foundry.version; the run that made it when its lineage names one); aliases are set to match the
    store's and MLflow aliases the store lacks are removed. Returns {alias: store version} as
    mirrored, or None (tracking off, or MLflow failed: a warning, the store is unchanged)."""
    if uri is None:
        return None
    from modelfoundry import store as model_store

    tracker = Tracker(uri, "")
    return tracker._call("mirroring the registry", lambda: _mirror(uri, store, name, model_store))


def _mirror(uri: str, store: str, name: str, model_store) -> dict[str, int]:
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    quiet_mlflow()
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        registered = client.create_registered_model(name, tags={"foundry.store": absolute(store)})
    by_version = {
        int(mv.tags[VERSION_TAG]): mv.version
        for mv in client.search_model_versions(f"name='{name}'")
        if VERSION_TAG in (mv.tags or {})
    }
    for version in model_store.versions(store, name):
        if version in by_version:
            continue
        try:
            entry = model_store.entry(model_store.StoreVersion(store, name, version))
        except model_store.CheckpointError:
            continue  # not a complete version (an upload under way)
        run_id = (entry.get("lineage") or {}).get("tracking_run_id")
        mv = client.create_model_version(
            name, source=entry["path"], run_id=run_id, tags={VERSION_TAG: str(entry["version"])}
        )
        by_version[entry["version"]] = mv.version
    wanted = model_store.aliases(store, name)
    for alias in set(registered.aliases or {}) - set(wanted):
        client.delete_registered_model_alias(name, alias)
    for alias, version in wanted.items():
        client.set_registered_model_alias(name, alias, by_version[version])
    return wanted
