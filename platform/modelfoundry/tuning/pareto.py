"""Compression as a tuning dimension: each trial trains, compresses and measures its model, a
multi-objective searcher (Optuna's NSGA-II) proposes the next configs, and the sweep ends with
the Pareto front over the objectives (accuracy up, latency and size down)."""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelfoundry.config import ConfigError
from modelfoundry.runs import Outcome, RunContext
from modelfoundry.storage import absolute, checkpoint_location, is_uri, join, upload_dir
from modelfoundry.tasks import task_spec
from modelfoundry.tuning.sweep_config import OBJECTIVE_MODES, CompressDims, SweepConfig


def objectives(sweep: SweepConfig, task_metric: str, task_mode: str) -> list[tuple[str, str]]:
    """[(metric, mode)] a compression sweep optimises; unknown names are refused."""
    names = sweep.tune.objectives or [task_metric, "p50_ms_b1", "size_bytes"]
    out = []
    for n in names:
        if n == task_metric:
            out.append((n, task_mode))
        elif n in OBJECTIVE_MODES:
            out.append((n, OBJECTIVE_MODES[n]))
        else:
            raise ConfigError(f"tune.objectives: {n!r} is not measured; choose from {[task_metric, *OBJECTIVE_MODES]}")
    if len(out) < 2:
        raise ConfigError(f"tune.objectives needs at least 2 objectives for a front, got {names}")
    return out


def teacher_path(sweep: SweepConfig, task: str, input_shape: tuple[int, ...]) -> str | None:
    """The store path of compress.teacher, checked to fit the sweep (a classifier of its inputs)."""
    if sweep.compress is None or not sweep.compress.teacher:
        return None
    from modelfoundry import store
    from modelfoundry.store.checkpoint import read_meta

    if not task_spec(task).classifies:
        raise ConfigError(f"compress.teacher: distillation needs a classification task, not {task}")
    path = store.resolve(absolute(sweep.job.train.model_store), *store.parse_ref(sweep.compress.teacher))
    shape = list(read_meta(path.uri).input_spec.shape)
    if tuple(shape) != tuple(input_shape):
        raise ConfigError(
            f"compress.teacher {sweep.compress.teacher!r} takes inputs of shape {shape}; "
            f"the sweep's data has {list(input_shape)}"
        )
    return path.uri


def dominates(a: dict[str, float], b: dict[str, float], objs: list[tuple[str, str]]) -> bool:
    """a is at least as good as b on every objective and better on one."""
    better = False
    for name, mode in objs:
        x, y = (a[name], b[name]) if mode == "max" else (-a[name], -b[name])
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(rows: list[dict[str, Any]], objs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [r for r in rows if not any(dominates(o, r, objs) for o in rows if o is not r)]


class KeepingSession:
    """A TuneSession whose epochs stay local: the loop's checkpoints are kept (the last one is the
    model to compress) and nothing goes to Tune, whose strict metric check (and the multi-objective
    searcher) take only the final result, which carries every objective."""

    def __init__(self, inner, keep: Path) -> None:
        self.inner, self.keep = inner, keep
        self.checkpoints_from_elsewhere = inner.checkpoints_from_elsewhere

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def checkpoint(self):
        return None  # a trial starts from scratch (or from start_from, when fine-tuning)

    def report(self, metrics: dict, directory: str | None) -> None:
        if directory:
            shutil.rmtree(self.keep, ignore_errors=True)
            shutil.copytree(directory, self.keep)


def run_trial(cfg, dims: CompressDims, splits, run_path: str, teacher_path: str | None, task: str) -> None:
    """Train `cfg` in this process, then prune + fine-tune / quantize as `dims` says, measure, and
    report the objectives with the compressed checkpoint as the trial's final result."""
    import torch
    from ray import tune

    from modelfoundry.compression.measure import parameters, profile, size_bytes
    from modelfoundry.compression.quantize import quantize_model
    from modelfoundry.store.checkpoint import load_checkpoint, write_checkpoint
    from modelfoundry.training.loop import train_loop_per_worker
    from modelfoundry.training.plan import TeacherSpec, worker_plan
    from modelfoundry.training.session import TuneSession

    teacher = TeacherSpec(teacher_path, dims.temperature, dims.alpha) if teacher_path else None
    with tempfile.TemporaryDirectory(prefix="mf-pareto-") as tmp:
        trained = Path(tmp) / "trained"
        session = KeepingSession(TuneSession(splits, cfg.train.use_gpu), trained)
        train_loop_per_worker(worker_plan(cfg, splits, join(run_path, "train"), teacher=teacher), session)
        loaded = load_checkpoint(trained)
        model, dataset = loaded.model, loaded.meta.dataset
        steps = []
        if dims.prune_ratio > 0:
            model = _prune_and_finetune(cfg, dims, model, dataset, splits, run_path, teacher, task, Path(tmp))
            steps.append(f"pruned {dims.prune_ratio:g}")
            if dims.finetune_epochs:
                steps.append(f"fine-tuned {dims.finetune_epochs}")
        out = Path(tmp) / "compressed"
        extra = {"task": task}
        state = None
        if dims.quantize:
            calib = torch.from_numpy(splits.x_train[:512])
            state = quantize_model(model, dims.scheme, calibration=calib)
            extra["quantization"] = {"scheme": dims.scheme}
            steps.append(dims.scheme)
        write_checkpoint(out, model, dataset=dataset, metrics={}, extra=extra, state=state)
        final = load_checkpoint(out)  # as serving loads it
        sizes, params = {"m": size_bytes(out)}, {"m": parameters(final.meta)}
        measured = {
            **profile({"m": final.model}, sizes, params, task, splits, dims.latency_rounds, (1,))["m"],
            "compression": ", ".join(steps) or "none",
            "epoch": cfg.train.epochs,
            "done": True,
        }
        meta = final.meta.updated(metrics={k: v for k, v in measured.items() if isinstance(v, (int, float))})
        (out / "model.json").write_text(meta.to_json())
        tune.report(measured, checkpoint=tune.Checkpoint.from_directory(str(out)))


def _prune_and_finetune(cfg, dims: CompressDims, model, dataset, splits, run_path: str, teacher, task: str, tmp: Path):
    """The trained model pruned by dims.prune_ratio, then fine-tuned dims.finetune_epochs in this
    process (from the pruned weights, with the teacher when distilling)."""
    from modelfoundry.compression.prune import prune
    from modelfoundry.config import with_overrides
    from modelfoundry.models import config_dict
    from modelfoundry.store.checkpoint import load_checkpoint, write_checkpoint
    from modelfoundry.training.loop import train_loop_per_worker
    from modelfoundry.training.plan import worker_plan
    from modelfoundry.training.session import TuneSession

    model = prune(model, dims.prune_ratio)
    if not dims.finetune_epochs:
        return model
    init, tuned = tmp / "pruned", tmp / "tuned"
    write_checkpoint(init, model, dataset=dataset, metrics={}, extra={"task": task})
    params = {k: v for k, v in config_dict(model).items() if k not in ("input_shape", "output_dim")}
    overrides = {f"model.{k}": v for k, v in params.items()}
    ft = with_overrides(cfg, {**overrides, "train.epochs": dims.finetune_epochs, "train.lr_schedule": "none"})
    fine = KeepingSession(TuneSession(splits, cfg.train.use_gpu), tuned)
    plan = worker_plan(ft, splits, join(run_path, "finetune"), start_from=str(init), teacher=teacher)
    train_loop_per_worker(plan, fine)
    return load_checkpoint(tuned).model


def collect(sweep: SweepConfig, results, objs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        m = r.metrics or {}
        if r.error is not None or not m.get("done") or any(m.get(n) is None for n, _ in objs):
            continue
        rows.append(
            {
                "trial_id": Path(r.path).name,
                **{k: (r.config or {}).get(k) for k in sweep.search},
                **{n: m[n] for n, _ in objs},
                "parameters": m.get("parameters"),
                "compression": m.get("compression"),
                "checkpoint_path": checkpoint_location(r.checkpoint) if r.checkpoint else None,
            }
        )
    return rows


def finish(
    sweep: SweepConfig,
    results,
    objs,
    run: RunContext,
    export: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Outcome:
    """The front, its members exported by `export(row)` when given (best first by the first objective)."""
    rows = collect(sweep, results, objs)
    if not rows:
        raise RuntimeError(f"no trial of {sweep.name} finished with its objectives; see {run.path}")
    front = pareto_front(rows, objs)
    for r in rows:
        r["on_front"] = r in front
    outcome = Outcome("pareto", sweep.name, run.path, trials=rows, details={"objectives": objs, "front": front})
    if export:
        for r in sorted(front, key=lambda r: r[objs[0][0]], reverse=objs[0][1] == "max"):
            if r["checkpoint_path"]:
                outcome.models.append(export(r))
    outcome.files = write_front(outcome)
    return outcome


def write_front(outcome: Outcome) -> list[str]:
    """pareto.csv (every finished trial, on_front marked) and pareto.png (the first objective
    against each other one: the front's members in red, labelled with their compression, dominated
    trials grey)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory(prefix="mf-pareto-") as tmp:
        out = Path(tmp) if is_uri(outcome.path) else Path(outcome.path)
        out.mkdir(parents=True, exist_ok=True)
        columns = [k for k in outcome.trials[0] if k != "checkpoint_path"]
        with open(out / "pareto.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(outcome.trials)
        objectives = outcome.details["objectives"]
        (first, _), others = objectives[0], objectives[1:]
        fig, axes = plt.subplots(1, len(others), figsize=(5 * len(others), 4), squeeze=False)
        for ax, (name, _) in zip(axes[0], others):
            grey = [r for r in outcome.trials if not r["on_front"]]
            ax.scatter([r[name] for r in grey], [r[first] for r in grey], c="0.7", label="dominated")
            front = outcome.details["front"]  # a front over every objective: not joined in a 2-D projection
            ax.scatter([r[name] for r in front], [r[first] for r in front], c="tab:red", label="Pareto front")
            for r in front:
                ax.annotate(
                    r["compression"], (r[name], r[first]), fontsize=6, xytext=(3, 3), textcoords="offset points"
                )
            ax.set_xlabel(name)
            ax.set_ylabel(first)
            ax.legend(fontsize=7)
        fig.suptitle(f"{outcome.name}: {len(outcome.details['front'])} of {len(outcome.trials)} trials on the front")
        fig.tight_layout()
        fig.savefig(out / "pareto.png", dpi=100)
        plt.close(fig)
        if is_uri(outcome.path):
            upload_dir(str(out), outcome.path)
    return [f"{outcome.path}/{n}" for n in ("pareto.csv", "pareto.png")]
