"""What the driver hands each Train worker: one typed, frozen object carrying only what the loop
uses (the validated job config itself, not a dict re-validated on every worker)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelfoundry.config import JobConfig
from modelfoundry.models import Task, family_spec


@dataclass(frozen=True)
class TeacherSpec:
    """Distillation: a model-store path (sha256-checked on load) and the loss's settings."""

    path: str
    temperature: float
    alpha: float


@dataclass(frozen=True)
class WorkerPlan:
    job: JobConfig
    task: Task
    model_fields: dict[str, Any]  # config fields the dataset sets (input shape, classes, vocabulary)
    stats: dict[str, float]  # normalisation statistics of the training split
    baselines: dict[str, float]  # reported beside the metrics every epoch (persistence MAE, unigram bpc)
    dataset: dict[str, Any]  # what checkpoints record about the data (incl. a tokenizer)
    run_path: str
    start_from: str | None = None  # a checkpoint to start from when the run has none of its own
    resume_from: str | None = None  # --resume: the run's newest checkpoint on storage (resume.latest_checkpoint)
    teacher: TeacherSpec | None = None
    # in-memory data: per split, each rank's (x, y) object refs (shares.rank_shares; the whole split once under one global order)
    shares: dict[str, list[tuple[Any, Any]]] | None = field(default=None)


def worker_plan(
    cfg: JobConfig,
    splits,
    run_path: str,
    start_from: str | None = None,
    teacher: TeacherSpec | None = None,
    resume_from: str | None = None,
) -> WorkerPlan:
    spec = family_spec(cfg.model.family)
    stats = splits.stats()
    return WorkerPlan(
        job=cfg,
        task=spec.task_for(splits.spec.task),
        model_fields=spec.from_dataset(splits.spec),
        stats=stats,
        baselines={k: float(v) for k, v in splits.extras.items() if k.endswith(("_mae", "_bpc"))},
        dataset={
            **splits.spec.to_dict(),
            "config": cfg.data.model_dump(mode="json"),
            "stats": stats,
            "train_size": len(splits.x_train),
            "test_size": len(splits.x_test),
        },
        run_path=run_path,
        start_from=start_from,
        teacher=teacher,
        resume_from=resume_from,
    )
