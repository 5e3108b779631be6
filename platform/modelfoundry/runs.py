"""What train, sweep and compress share: a `RunContext` (the run's directory, its MLflow run, the
lineage and export of what it publishes, the registry mirror, its wall time) and the one result
type they return, `Outcome`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from modelfoundry import store, tracking
from modelfoundry.storage import absolute, join

Kind = Literal["train", "sweep", "pareto", "compress"]


@dataclass
class Outcome:
    """A run's result. The fields every kind has come first; `details` holds what one kind alone
    reports (a sweep's best config, a compression's before and after); `summary()` is the JSON
    the CLI prints with --json."""

    kind: Kind
    name: str
    path: str  # the run's directory (a sweep's, the fine-tuning run's of a compression)
    metric: str | None = None  # the ranking metric (a Pareto sweep has objectives instead)
    mode: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # of the best checkpoint / trial / compressed model
    checkpoint: str | None = None  # the best checkpoint (what was exported)
    last_checkpoint: str | None = None  # train: the latest (its model.json holds every epoch)
    model: dict[str, Any] | None = None  # the exported version's store entry
    models: list[dict[str, Any]] = field(default_factory=list)  # every exported version (a Pareto front's)
    files: list[str] = field(default_factory=list)  # plots and reports written
    trials: list[dict[str, Any]] = field(default_factory=list)  # a sweep's trials
    details: dict[str, Any] = field(default_factory=dict)
    tracking_run_id: str | None = None  # the MLflow run (a sweep's trials are its child runs)
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        entry = {k: self.model[k] for k in ("name", "version", "path")} if self.model else None
        common = {"name": self.name, "tracking_run_id": self.tracking_run_id, "wall_s": round(self.wall_s, 1)}
        if self.kind == "train":
            return {
                **common,
                "metric": self.metric,
                "best": self.metrics.get(self.metric or ""),
                "metrics": self.metrics,
                "checkpoint": self.checkpoint,
                "run_path": self.path,
                "model_store": entry,
                "plots": self.files,
                **{k: self.details[k] for k in ("workers", "recoveries") if k in self.details},
            }
        if self.kind == "sweep":
            return {
                **common,
                "path": self.path,
                "metric": self.metric,
                "mode": self.mode,
                "best_config": self.details["best_config"],
                "best_metric": self.details["best_metric"],
                "trials": len(self.trials),
                "stopped_early": sum(t["stopped_early"] for t in self.trials),
                "epochs_total": self.details["total_epochs"],
                "model_store": entry,
                "files": self.files,
                "best_trial": self.details.get("best_trial"),
            }
        if self.kind == "pareto":
            return {
                **common,
                "path": self.path,
                "objectives": [f"{n} ({m})" for n, m in self.details["objectives"]],
                "trials": len(self.trials),
                "front": [{k: v for k, v in r.items() if k != "checkpoint_path"} for r in self.details["front"]],
                "model_store": [{k: m[k] for k in ("name", "version", "path")} for m in self.models],
                "files": self.files,
            }
        return {**common, **(entry or {}), **self.details}  # compress: the new version and its measures


class RunContext:
    """One run's setup and ending, the same for train, sweep and compress. Used as a context
    manager: a run that raises ends its MLflow run FAILED (KILLED on Ctrl-C), unless the tracker
    was lent by an enclosing run (a compression's fine-tuning), which ends it itself."""

    def __init__(
        self,
        kind: Kind,
        name: str,
        run_id: str,
        storage: str,
        model_store: str,
        *,
        params: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        tracking_uri: str | None = None,
        tracker: tracking.Tracker | None = None,
    ) -> None:
        self.kind, self.name, self.run_id = kind, name, run_id
        self.storage, self.model_store = absolute(storage), absolute(model_store)
        self.path = join(self.storage, name, run_id)
        self.owns_tracker = tracker is None
        self.tracker = tracker or tracking.Tracker(tracking.tracking_uri(self.storage, tracking_uri), name)
        if self.owns_tracker:
            self.tracker.start(run_id, params or {}, {"foundry.kind": kind, **(tags or {})})
        self.t0 = time.perf_counter()
        self.exported: set[str] = set()  # names this run published versions of

    def __enter__(self) -> RunContext:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.owns_tracker:
            self.tracker.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    def end(self, status: str) -> None:
        """End the MLflow run early with `status` (an interrupted sweep: KILLED)."""
        if self.owns_tracker:
            self.tracker.end(status)

    def lineage(self, config: dict[str, Any], **links: Any) -> dict[str, Any]:
        """What a version this run publishes came from (store.lineage_record) and its MLflow run."""
        return store.lineage_record(config, tracking_run_id=self.tracker.run_id, **links)

    def export(
        self, checkpoint: str, name: str, config: dict[str, Any], extra: dict[str, Any] | None = None, **links: Any
    ) -> dict[str, Any]:
        """Publish `checkpoint` as the next version of `name`, with its lineage; its store entry."""
        entry = store.export(
            checkpoint, self.model_store, name, {**(extra or {}), "lineage": self.lineage(config, **links)}
        )
        self.exported.add(name)
        return entry

    def finish(self, outcome: Outcome) -> Outcome:
        """Log what the run wrote, end its MLflow run, mirror what it exported to the registry."""
        artifact_dir = {"train": "plots", "compress": "plots"}.get(self.kind, "sweep")
        for f in outcome.files:
            self.tracker.log_artifact(f, artifact_dir)
        outcome.tracking_run_id = self.tracker.run_id
        if self.owns_tracker:
            tracking.log_model_entry(self.tracker, outcome.model)
            self.tracker.end()
            uri = self.tracker.uri if self.tracker.enabled else None
            for name in sorted(self.exported):
                tracking.mirror_registry(uri, self.model_store, name)
        outcome.wall_s = time.perf_counter() - self.t0
        return outcome
