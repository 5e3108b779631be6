"""`foundry train`, `foundry run` and `foundry tune`."""

from __future__ import annotations

import argparse
from typing import Any

from modelfoundry.cli.table import Command, add_cluster_args, add_tracking_arg, print_json


def add_train_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--config", required=True, help="job YAML (see jobs/configs/)")
    t.add_argument(
        "--workers", type=_workers, help="training workers: N (train.num_workers) or MIN-MAX (elastic: train.workers)"
    )
    t.add_argument("--gpu", action="store_true", help="one GPU per worker, nccl, bf16 autocast")
    t.add_argument("--epochs", type=int, help="train.epochs")
    t.add_argument(
        "--checkpoint-every-steps",
        type=int,
        metavar="N",
        help="train.checkpoint_every_steps: a step snapshot every N steps (a failure loses at most N)",
    )
    t.add_argument("--storage", help="run storage: a directory or a URI such as s3://bucket/runs")
    t.add_argument("--model-store", help="model store: a directory or a URI")
    t.add_argument("--resume", action="store_true", help="continue the latest run of this config's name")
    add_tracking_arg(t)
    t.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="FIELD",
        help="with --resume: let this field differ from the run's config (train.epochs, train.num_workers, ...)",
    )
    add_cluster_args(t)


def _workers(text: str) -> int | dict[str, int]:
    lo, sep, hi = text.partition("-")
    try:
        n = (int(lo), int(hi)) if sep else int(lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a count (2) or a range MIN-MAX (1-4)") from None
    return {"min": n[0], "max": n[1]} if sep else n


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from modelfoundry.config_flat import UNSET

    elastic = isinstance(args.workers, dict)  # the one given replaces the other
    pairs = {
        "train.num_workers": UNSET if elastic else args.workers,
        "train.workers": args.workers if elastic else (UNSET if args.workers else None),
        "train.epochs": args.epochs,
        "train.checkpoint_every_steps": args.checkpoint_every_steps,
        "train.storage": args.storage,
        "train.model_store": args.model_store,
        "train.use_gpu": True if args.gpu else None,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def cmd_train(args: argparse.Namespace) -> int:
    from modelfoundry.cluster import connect
    from modelfoundry.config import load_config
    from modelfoundry.training import train

    cfg = load_config(args.config, train_overrides(args))
    print(connect(args.address, log_to_driver=args.verbose), flush=True)
    outcome = train(cfg, resume=args.resume, allow_changes=set(args.allow_change), tracking_uri=args.tracking_uri)
    s = outcome.summary()
    print(
        f"\n== {cfg.name}: best {s['metric']} = {s['best']:.4f} (epoch {s['metrics'].get('epoch')}) in {s['wall_s']}s"
    )
    for key in ("checkpoint", "run_path"):
        print(f"   {key}: {s[key]}")
    _print_entry(s["model_store"])
    for p in s["plots"]:
        print(f"   plot: {p}")
    if s["tracking_run_id"]:
        print(f"   MLflow run: {s['tracking_run_id']}")
    if args.json:
        print_json(s)
    return 0


def _print_entry(entry: dict[str, Any] | None) -> None:
    if entry:
        print(f"   model store: {entry['name']} v{entry['version']} at {entry['path']}")


def cmd_run(args: argparse.Namespace) -> int:
    from modelfoundry.cluster import connect
    from modelfoundry.config import load_config
    from modelfoundry.quickstart import train_serve_query

    cfg = load_config(args.config, train_overrides(args))
    print(connect(args.address, log_to_driver=args.verbose), flush=True)
    s = train_serve_query(cfg, port=args.port)
    shown = {k: round(v, 4) for k, v in s.items() if k.startswith("served_") and isinstance(v, float)}
    print(
        f"\n== {cfg.name}: trained to {s['metric']} = {s['best']:.4f}; served {s['served_examples']} held-out "
        f"inputs over HTTP at {s['url']}: {shown}; model store {s['model_store']['name']} v{s['model_store']['version']}"
    )
    if args.json:
        print_json(s)
    return 0


def _tune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="sweep YAML (see jobs/configs/tune_*.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the latest sweep of this name")
    add_tracking_arg(p)
    add_cluster_args(p)


def cmd_tune(args: argparse.Namespace) -> int:
    from modelfoundry.cluster import connect
    from modelfoundry.tuning import load_sweep, run_sweep
    from modelfoundry.tuning.sweep import SweepInterrupted

    sweep = load_sweep(args.config)
    print(connect(args.address, log_to_driver=args.verbose), flush=True)
    try:
        outcome = run_sweep(sweep, resume=args.resume, verbose=args.verbose, tracking_uri=args.tracking_uri)
    except SweepInterrupted as err:
        err.args = (f"{err}\n  continue it with: foundry tune --config {args.config} --resume",)
        raise
    s = outcome.summary()
    if "front" in s:  # a compression sweep
        print(f"\n== {sweep.name}: {s['trials']} trials; Pareto front over {', '.join(s['objectives'])}:")
        for r in s["front"]:
            print("   " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
        for m in s["model_store"]:
            _print_entry(m)
    else:
        print(
            f"\n== {sweep.name}: {s['trials']} trials ({s['stopped_early']} stopped early, {s['epochs_total']} "
            f"epochs); best {s['metric']} = {s['best_metric']:.4f} with {s['best_config']}"
        )
        _print_entry(s["model_store"])
    for f in s["files"]:
        print(f"   wrote {f}")
    if args.json:
        print_json(s)
    return 0


def _run_args(p: argparse.ArgumentParser) -> None:
    add_train_args(p)
    p.add_argument("--port", type=int, default=8000)


COMMANDS = [
    Command(
        "train",
        "train a model with Ray Train (data-parallel)",
        "Train a model family data-parallel with Ray Train on a local cluster (default) or --address, "
        "export the best checkpoint to the model store and plot its learning curves.",
        "foundry train --config jobs/configs/cnn_digits.yaml --workers 2 --epochs 5",
        add_train_args,
        cmd_train,
    ),
    Command(
        "tune",
        "search hyperparameters with Ray Tune",
        "Search hyperparameters with Ray Tune (ASHA, PBT, random or Optuna; a compression sweep's "
        "Pareto front), export the best model and write trials.csv, best_config.yaml and a plot.",
        "foundry tune --config jobs/configs/tune_cnn_digits.yaml",
        _tune_args,
        cmd_tune,
    ),
    Command(
        "run",
        "the main job: train, export, serve, query the held-out split over HTTP",
        "The main job end to end: train, export, serve on Ray Serve over HTTP on 127.0.0.1 and "
        "query it with the held-out split, reporting the accuracy the service gave.",
        "foundry run --config jobs/configs/cnn_digits.yaml --workers 2",
        _run_args,
        cmd_run,
    ),
]
