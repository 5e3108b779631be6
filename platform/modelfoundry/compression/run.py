"""`foundry compress`: a model-store entry in, a compressed model-store entry out.

parent (NAME or NAME:VERSION, sha256-checked) -> quantize | prune (+ fine-tune on Ray Train) |
distill (a student trained on Ray Train against the frozen parent) -> the result loaded exactly as
serving loads it -> measured beside the parent (size, parameters, p50 latency, test metric,
agreement) -> exported to the store with its lineage in model.json.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelfoundry.compression.config import CompressConfig
from modelfoundry.compression.measure import agreement, parameters, profile, size_bytes
from modelfoundry.compression.prune import PRUNABLE, parameter_count, prune, widths
from modelfoundry.compression.quantize import check_scheme, quantize_model
from modelfoundry.config import DataSection, JobConfig
from modelfoundry.models import model_config
from modelfoundry.runs import Outcome, RunContext
from modelfoundry.storage import absolute, check_writable, join, upload_dir
from modelfoundry.store.checkpoint import CheckpointMeta, LoadedModel, load_checkpoint, read_meta, write_checkpoint
from modelfoundry.tasks import task_of, task_spec
from modelfoundry.training.plan import TeacherSpec


@dataclass
class Plan:
    """Everything checked before any work: the parent, its data, the output's name."""

    cfg: CompressConfig
    parent_name: str
    parent_version: int
    parent_path: str
    parent_meta: CheckpointMeta
    data: DataSection
    task: str
    output: str
    store: str
    transfer_path: str | None = None


def plan(parent_ref: str, cfg: CompressConfig, store: str | None = None) -> Plan:
    """Validate the whole request; every mistake raises ValueError naming it, before any Ray work
    starts and before anything is written to the store."""
    from modelfoundry import store as model_store

    store = absolute(store or cfg.train.model_store)
    name, version = model_store.parse_ref(parent_ref)
    found = model_store.resolve(store, name, version)  # unknown name or version: ValueError
    meta = read_meta(found.uri)
    family, task = meta.family, meta.task
    if not task_spec(task).compressible:
        raise ValueError(
            f"{parent_ref} is a model of task {task!r}; compression here measures classifiers, regressors and VAEs "
            "(quantizing and distilling a language model is not built yet)"
        )
    if meta.quantization:
        raise ValueError(f"{parent_ref} is already quantized ({meta.codec}); compress its parent")
    data_cfg = meta.dataset.get("config")
    if not data_cfg:
        raise ValueError(f"{parent_ref} records no dataset config in model.json; it cannot be evaluated")
    data = DataSection.model_validate(data_cfg)
    transfer_path = None
    if cfg.method == "quantize":
        check_scheme(cfg.quantize.scheme, family)
    elif cfg.method == "prune":
        if family not in PRUNABLE:
            raise ValueError(f"structured pruning applies to families {list(PRUNABLE)}; {parent_ref} is a {family}")
    else:
        transfer_path = _check_distill(cfg.distill, parent_ref, meta, store)
    check_writable(store)
    if cfg.method != "quantize":
        check_writable(cfg.train.storage)
    return Plan(cfg, name, found.version, found.uri, meta, data, task, cfg.output_name(name), store, transfer_path)


def _check_distill(d, parent_ref: str, meta: CheckpointMeta, store: str) -> str | None:
    """A distillation's teacher must classify, its student take the teacher's inputs and give its
    classes, its transfer VAE (if any) generate those inputs. Returns the VAE's location."""
    from modelfoundry import store as model_store

    input_shape = meta.input_spec.shape
    if not task_spec(meta.task).classifies:
        raise ValueError(f"distillation needs a classifier teacher; {parent_ref} is a {meta.task} model")
    if not task_spec(task_of(d.student.family, "classification")).classifies:
        raise ValueError(f"a distillation student must be a classifier family (mlp, cnn, rnn), not {d.student.family}")
    try:  # the student must take the teacher's inputs and give its number of classes
        model_config(
            d.student.family,
            d.student.preset,
            input_shape=input_shape,
            output_dim=meta.config["output_dim"],
            **d.student.params,
        )
    except ValueError as err:
        raise ValueError(
            f"student {d.student.family}/{d.student.preset} cannot take the teacher's input shape "
            f"{list(input_shape)}: {err}"
        ) from None
    if not d.transfer:
        return None
    transfer_path = model_store.resolve(store, *model_store.parse_ref(d.transfer.vae)).uri
    vmeta = read_meta(transfer_path)
    if vmeta.family != "vae":
        raise ValueError(f"transfer.vae {d.transfer.vae!r} is a {vmeta.family}, not a vae")
    if vmeta.input_spec.shape != input_shape:
        raise ValueError(
            f"transfer.vae {d.transfer.vae!r} generates inputs of shape {list(vmeta.input_spec.shape)}; "
            f"the teacher takes {list(input_shape)}"
        )
    return transfer_path


def compress(p: Plan, tracking_uri: str | None = None) -> Outcome:
    """Run the plan (Ray must be connected for prune fine-tuning and distillation). Tracked as an
    MLflow run in the experiment named for the output (modelfoundry.tracking)."""
    cfg = p.cfg
    run_id = f"{cfg.method}-{p.parent_name}-v{p.parent_version}"
    tags = {"foundry.parent": f"{p.parent_name}:{p.parent_version}"}
    with RunContext(
        "compress", p.output, run_id, cfg.train.storage, p.store,
        params=cfg.model_dump(mode="json"), tags=tags, tracking_uri=tracking_uri,
    ) as run:  # fmt: skip
        outcome = _compress(p, run)
        run.tracker.log_metrics({f"parent_{k}": v for k, v in outcome.details["before"].items()}, 0)
        run.tracker.log_metrics(outcome.details["after"], 0)
    return run.finish(outcome)


def _compress(p: Plan, run: RunContext) -> Outcome:
    from modelfoundry.data import load_splits

    cfg = p.cfg
    parent = load_checkpoint(p.parent_path)  # sha256-checked
    splits = load_splits(p.data)
    log = _logger(p.output)
    log(f"compressing {p.parent_name} v{p.parent_version} ({p.parent_meta.family}) by {cfg.method} {cfg.summary()}")
    with tempfile.TemporaryDirectory(prefix="mf-compress-") as tmp:
        # the checkpoint to publish: written here, or the best of a fine-tuning / distillation run
        source = _compressed(p, parent, splits, tmp, log, run.tracker)
        result = load_checkpoint(source)  # exactly as serving loads it
        measures = _measure(p, parent, result, source, splits)
        before, after = measures["parent"], measures["compressed"]
        metric = task_spec(p.task).metric
        latency = f", p50 b1 {before['p50_ms_b1']:.3f} -> {after['p50_ms_b1']:.3f} ms" if "p50_ms_b1" in before else ""
        log(
            f"size {before['size_bytes']} -> {after['size_bytes']} bytes, "
            f"{metric} {before[metric]:.4f} -> {after[metric]:.4f}{latency}"
        )
        parent_link = {"name": p.parent_name, "version": p.parent_version, "sha256": p.parent_meta.sha256}
        compression = {
            "method": cfg.method,
            "params": cfg.summary(),
            "train": cfg.train.model_dump(mode="json") if cfg.method != "quantize" else None,
            "parent": {**parent_link, "family": p.parent_meta.family, "config": p.parent_meta.config},
            "before": before,
            "after": after,
            "agreement": measures["agreement"],
        }
        # the store copies model.pt and model.json (without the optimizer state) and adds these
        entry = run.export(
            source,
            p.output,
            {"compress": cfg.model_dump(mode="json"), "data": p.data.model_dump(mode="json")},
            {"metrics": {**result.meta.metrics, **after}, "compression": compression},
            parent={"name": p.parent_name, "version": p.parent_version, "path": p.parent_path},
        )
    log(f"wrote {entry['name']} v{entry['version']} at {entry['path']} in {time.perf_counter() - run.t0:.1f}s")
    details = {
        "method": cfg.method,
        "params": cfg.summary(),
        "parent": {**parent_link, "family": p.parent_meta.family},
        "before": before,
        "after": after,
        "agreement": measures["agreement"],
        "ratios": _ratios(before, after),
    }
    return Outcome("compress", p.output, run.path, metric, task_spec(p.task).mode, after, model=entry, details=details)


def _compressed(p: Plan, parent: LoadedModel, splits, tmp: str, log, tracker) -> str:
    """The compressed model's checkpoint: quantized or pruned here, or the best checkpoint of a
    fine-tuning or distillation run."""
    cfg = p.cfg
    source = str(Path(tmp) / "out")
    extra: dict[str, Any] = {"task": p.task, "run": p.output}
    if cfg.method == "quantize":
        scheme = cfg.quantize.scheme
        calib = torch.from_numpy(splits.x_train[: cfg.quantize.calibration_samples])
        state = quantize_model(parent.model, scheme, calibration=calib)
        extra["quantization"] = {"scheme": scheme, "format": "int8 + per-channel float32 scale (::scale)"}
        write_checkpoint(source, parent.model, dataset=p.parent_meta.dataset, metrics={}, extra=extra, state=state)
        log(f"quantized to {scheme}")
        return source
    if cfg.method == "prune":
        pruned = prune(parent.model, cfg.prune.ratio)
        log(
            f"pruned {parameter_count(parent.model)} -> {parameter_count(pruned)} parameters "
            f"{widths(parent.model)} -> {widths(pruned)}"
        )
        if cfg.prune.finetune:
            return _fine_tune(p, pruned, splits, tmp, log, tracker)
        write_checkpoint(source, pruned, dataset=p.parent_meta.dataset, metrics={}, extra=extra)
        return source
    return _distill(p, splits, log, tracker)


def _logger(name: str):
    def log(msg: str) -> None:
        print(f"[{name}] {msg}", flush=True)

    return log


def _job(p: Plan, family: str, preset: str, params: dict[str, Any]) -> JobConfig:
    return JobConfig.model_validate(
        {
            "name": p.output,
            "model": {"family": family, "preset": preset, **params},
            "data": p.data.model_dump(mode="json"),
            "train": p.cfg.train.model_dump(mode="json"),
        }
    )


def _fine_tune(p: Plan, pruned: torch.nn.Module, splits, tmp: str, log, tracker) -> str:
    """Fine-tune the pruned model with the training loop on Ray Train (DDP), starting from its
    pruned weights (written to the run storage: every worker, on any node, reads them)."""
    from modelfoundry.models import config_dict
    from modelfoundry.training import train

    cfg_model = {k: v for k, v in config_dict(pruned).items() if k not in ("input_shape", "output_dim")}
    job = _job(p, p.parent_meta.family, "default", cfg_model)
    local = Path(tmp) / "pruned"
    write_checkpoint(local, pruned, dataset=p.parent_meta.dataset, metrics={}, extra={"task": p.task})
    init = join(absolute(job.train.storage), job.name, f"pruned-init-{int(time.time())}")
    upload_dir(str(local), init)
    log(f"fine-tuning for {job.train.epochs} epochs on {job.train.num_workers} worker(s)")
    outcome = train(job, export=False, splits=splits, start_from=init, tracker=tracker)
    return outcome.checkpoint


def _distill(p: Plan, splits, log, tracker) -> str:
    from modelfoundry.training import train

    d = p.cfg.distill
    job = _job(p, d.student.family, d.student.preset, dict(d.student.params))
    if d.transfer:
        splits = with_transfer_set(splits, p.parent_path, p.transfer_path, d.transfer.samples, d.transfer.seed)
        log(f"transfer set: {d.transfer.samples} inputs synthesised by {d.transfer.vae}, labelled by the teacher")
    log(
        f"distilling into {d.student.family}/{d.student.preset} (T={d.temperature}, alpha={d.alpha}) "
        f"for {job.train.epochs} epochs on {job.train.num_workers} worker(s)"
    )
    teacher = TeacherSpec(p.parent_path, d.temperature, d.alpha)
    return train(job, export=False, splits=splits, teacher=teacher, tracker=tracker).checkpoint


@torch.inference_mode()
def with_transfer_set(splits, teacher_path: str, vae_path: str, n: int, seed: int):
    """The training split plus `n` inputs decoded by the VAE from random latents (the article's
    data synthesis by a generator), labelled with the teacher's predictions."""
    import dataclasses

    vae = load_checkpoint(vae_path).model
    teacher = load_checkpoint(teacher_path).model
    g = torch.Generator().manual_seed(seed)
    x = vae.sample(n, generator=g).reshape(n, *splits.x_train.shape[1:])
    # the VAE decodes pixel intensities in [0, 1], the range of the image datasets' inputs
    y = torch.cat([teacher(c).argmax(1) for c in x.split(512)])
    return dataclasses.replace(
        splits,
        x_train=np.concatenate([splits.x_train, x.numpy().astype(splits.x_train.dtype)]),
        y_train=np.concatenate([splits.y_train, y.numpy().astype(splits.y_train.dtype)]),
    )


def _measure(p: Plan, parent: LoadedModel, result: LoadedModel, source: str, splits) -> dict[str, Any]:
    models = {"parent": parent.model, "compressed": result.model}
    sizes = {"parent": size_bytes(p.parent_path), "compressed": size_bytes(source)}
    params = {"parent": parameters(p.parent_meta), "compressed": parameters(result.meta)}
    m = p.cfg.measure
    out = profile(models, sizes, params, p.task, splits, m.rounds, tuple(m.batch_sizes))
    out["agreement"] = agreement(parent.model, result.model, p.task, splits.x_test)
    return out


def _ratios(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    keys = ["size_bytes", "parameters", *(k for k in before if k.startswith("p50_ms_"))]
    return {k: round(after[k] / before[k], 4) for k in keys if before.get(k)}


__all__ = ["Plan", "compress", "plan", "with_transfer_set"]
