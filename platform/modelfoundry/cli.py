"""The `foundry` command: train, models (and, as they land, tune and serve)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# nothing heavy at import: `foundry --help` and `--version` answer without loading torch or Ray


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modelfoundry")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _add_tracking_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<run storage>/mlflow.db; "
        "open it with `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`)",
    )


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument(
        "--verbose", action="store_true", help="show the workers' and Ray's own log lines (always in Ray's log files)"
    )


# each subcommand's --help: what it does, and a command to copy (run from the project root)
ABOUT: dict[str, tuple[str, str]] = {
    "train": (
        "Train a model family data-parallel with Ray Train on a local cluster (default) or --address, "
        "export the best checkpoint to the model store and plot its learning curves.",
        "foundry train --config jobs/configs/cnn_digits.yaml --workers 2 --epochs 5",
    ),
    "tune": (
        "Search hyperparameters with Ray Tune (ASHA, PBT, random or Optuna; a compression sweep's "
        "Pareto front), export the best model and write trials.csv, best_config.yaml and a plot.",
        "foundry tune --config jobs/configs/tune_cnn_digits.yaml",
    ),
    "run": (
        "The main job end to end: train, export, serve on Ray Serve over HTTP on 127.0.0.1 and "
        "query it with the held-out split, reporting the accuracy the service gave.",
        "foundry run --config jobs/configs/cnn_digits.yaml --workers 2",
    ),
    "compress": (
        "Quantize, prune or distil a model-store entry into a new entry with its lineage, measuring "
        "size, speed and test metrics against the parent.",
        "foundry compress cnn-digits --config jobs/configs/compress_int8.yaml",
    ),
    "serve": (
        "Serve a model-store entry (monolithic or split into stage services) or a Serve YAML over "
        "HTTP: the v1 REST API, Open Inference Protocol v2, and a demo page at /.",
        "foundry serve cnn-digits --store models --port 8000",
    ),
    "submit": (
        "Submit `foundry train`, `tune` or `compress` as a Ray job to a running cluster (the "
        "project uploaded as its working dir) and follow its logs.",
        "foundry submit train --address http://HEAD:8265 --config jobs/configs/cnn_digits.yaml --workers 2",
    ),
    "jobs": (
        "List the Ray jobs of a cluster, show one's logs, or stop one.",
        "foundry jobs logs raysubmit_XXXX --address http://HEAD:8265",
    ),
    "export": (
        "Write NAME[:VERSION] from the model store in a format other runtimes load, next to it "
        "(<store>/NAME/VERSION/exports/FORMAT/). The export is run on a batch of another size and must match "
        "the PyTorch model before it is published; export.json records the difference and the lineage.",
        "foundry export cnn-digits --format onnx --store models",
    ),
    "models": (
        "The model store: every exported version with its family, dataset, test metrics, lineage and aliases.",
        "",
    ),
    "models list": ("List the model store's versions.", "foundry models list --store models"),
    "models show": (
        "One version (NAME, NAME:VERSION or NAME@ALIAS): its aliases, metrics and lineage chain (run, sweep, "
        "trial, config hash, dataset and split seed, parent versions of a compressed model).",
        "foundry models show cnn-digits@champion --store models",
    ),
    "models alias": (
        "Point an alias (champion, challenger, any name) at a version, or move it; --delete removes it. The "
        "store holds aliases and their history (the source of truth); the MLflow registry mirrors them.",
        "foundry models alias cnn-digits 3 champion --store models",
    ),
    "rollout": (
        "Change a live canary app's traffic between its versions in place (no replica restarts, no dropped "
        "requests), or --promote the challenger to champion, or --rollback to the champion.",
        "foundry rollout cnn-digits --weight challenger=25",
    ),
}


def _sub(sub, name: str, help: str, **kw) -> argparse.ArgumentParser:
    description, example = ABOUT[name]
    return sub.add_parser(
        name.rsplit(" ", 1)[-1],
        help=help,
        description=description,
        epilog=f"example: {example}" if example else None,
        **kw,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="foundry",
        description="Train, tune, compress, export and serve model families on Ray.",
        epilog="example: foundry run --config jobs/configs/cnn_digits.yaml   (foundry COMMAND --help for each)",
    )
    parser.add_argument("--version", action="version", version=f"foundry {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = _sub(sub, "train", help="train a model with Ray Train (data-parallel)")
    add_train_args(t)

    tu = _sub(sub, "tune", help="search hyperparameters with Ray Tune")
    tu.add_argument("--config", required=True, help="sweep YAML (see jobs/configs/tune_*.yaml)")
    tu.add_argument("--resume", action="store_true", help="continue the latest sweep of this name")
    _add_tracking_arg(tu)
    _add_cluster_args(tu)

    r = _sub(sub, "run", help="the main job: train, export, serve, query the held-out split over HTTP")
    add_train_args(r)
    r.add_argument("--port", type=int, default=8000)

    c = _sub(sub, "compress", help="quantize, prune or distil a model-store entry into a new entry")
    c.add_argument("parent", help="the model to compress: NAME or NAME:VERSION in the model store")
    c.add_argument("--config", required=True, help="compression YAML (see jobs/configs/compress_*.yaml)")
    c.add_argument("--name", help="model-store name of the result (default: from the config, else <parent>-<method>)")
    c.add_argument("--store", help="model store directory or URI (default: the config's train.model_store)")
    c.add_argument("--storage", help="run storage for fine-tuning / distillation (train.storage)")
    c.add_argument("--workers", type=int, help="training workers for fine-tuning / distillation")
    c.add_argument("--epochs", type=int, help="fine-tuning / distillation epochs")
    c.add_argument("--gpu", action="store_true", help="fine-tune / distil on GPUs (one per worker)")
    _add_tracking_arg(c)
    _add_cluster_args(c)

    s = _sub(sub, "serve", help="serve a model-store name or a Serve config YAML on Ray Serve")
    s.add_argument("target", help="a model-store name (NAME, NAME:VERSION or NAME@ALIAS), or a serve_apps/*.yaml file")
    s.add_argument("--split", help="cut the model into stage services: auto, auto:K, or JSON groups like [[0],[1,2]]")
    s.add_argument(
        "--stage-models",
        help="with --split: JSON list, per stage, of a model-store entry to run there instead (null keeps the "
        "model), e.g. '[null, \"cnn-digits-dynamic-int8\"]' for an int8 stage beside a float one",
    )
    s.add_argument(
        "--version", default="latest", help="a version number, latest, or @ALIAS (or NAME:VERSION, NAME@ALIAS)"
    )
    s.add_argument(
        "--traffic",
        help="a canary: versions and percents, e.g. champion=90,challenger=10 (aliases, version numbers or "
        "latest); change it live with foundry rollout",
    )
    s.add_argument(
        "--sticky-header",
        help="with --traffic: a request header (user or session id) that keeps a client on one version",
    )
    s.add_argument("--store", default="models", help="model store directory or URI (default: models)")
    s.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default: loopback only)")
    s.add_argument("--api-keys-env", help="NAME of an env var holding comma-separated API keys (required off loopback)")
    s.add_argument("--api-keys-file", help="a file of API keys, one per line (required off loopback)")
    s.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback --host without API keys (anyone can call it)"
    )
    s.add_argument(
        "--allowed-host",
        action="append",
        dest="allowed_hosts",
        metavar="NAME",
        help="a Host header name to answer besides loopback ones (repeatable; '*' for any). Without API keys "
        "other names get 421, which stops web pages reaching the service by DNS rebinding",
    )
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--for", dest="duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    s.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")

    ro = _sub(sub, "rollout", help="change a live canary app's traffic, promote or roll back")
    ro.add_argument("app", help="the canary app: the model name foundry serve --traffic deployed")
    act = ro.add_mutually_exclusive_group(required=True)
    act.add_argument(
        "--weight", action="append", metavar="ARM=PERCENT", help="e.g. challenger=25 (the other arm takes the rest)"
    )
    act.add_argument(
        "--promote",
        nargs="?",
        const="challenger",
        metavar="ARM",
        help="ARM (default challenger) becomes champion and takes all traffic",
    )
    act.add_argument(
        "--rollback", action="store_true", help="all traffic back to the champion arm, and the champion alias with it"
    )
    act.add_argument("--status", action="store_true", help="print the live weights")
    ro.add_argument("--address", help="the Ray cluster serving the app (default: $RAY_ADDRESS, else the local one)")
    _add_tracking_arg(ro)

    sb = _sub(sub, "submit", help="submit train/tune as a Ray job to a running cluster and follow it")
    sb.add_argument("kind", choices=["train", "tune", "compress"])
    sb.add_argument("--address", required=True, help="the Jobs API, e.g. http://HEAD:8265")
    sb.add_argument("--working-dir", help="the project root to upload (default: this installation's)")
    sb.add_argument("--no-follow", action="store_true", help="print the job id and return")
    sb.add_argument(
        "--dry-run", action="store_true", help="list the files the upload would carry (secrets excluded) and stop"
    )

    j = _sub(sub, "jobs", help="list, show logs of, or stop Ray jobs")
    j.add_argument("action", choices=["list", "logs", "stop"])
    j.add_argument("job_id", nargs="?")
    j.add_argument("--address", required=True, help="the Jobs API, e.g. http://HEAD:8265")

    e = _sub(
        sub, "export", help="write a model-store version as ONNX, safetensors or TorchScript, checked against PyTorch"
    )
    e.add_argument("model", help="NAME or NAME:VERSION in the model store (default version: latest)")
    e.add_argument("--format", required=True, dest="fmt", choices=["onnx", "safetensors", "torchscript"])
    e.add_argument("--store", default="models", help="model store directory or URI (default: models)")
    e.add_argument("--json", action="store_true", help="print export.json as one JSON line")

    m = _sub(sub, "models", help="the model store")
    msub = m.add_subparsers(dest="models_command", required=True)
    ml = _sub(msub, "models list", help="list exported models")
    ml.add_argument("--store", default="models", help="model store directory or URI (default: models)")
    ml.add_argument("--json", action="store_true")
    ms = _sub(msub, "models show", help="one version: aliases, metrics, lineage chain")
    ms.add_argument("model", help="NAME, NAME:VERSION or NAME@ALIAS")
    ms.add_argument("--store", default="models", help="model store directory or URI (default: models)")
    ms.add_argument("--json", action="store_true")
    ma = _sub(msub, "models alias", help="point an alias at a version (or --delete it)")
    ma.add_argument("model", help="the model-store name")
    ma.add_argument("version", nargs="?", help="the version: a number, 'latest', or @ALIAS (copies that alias)")
    ma.add_argument("alias", nargs="?", help="the alias: champion, challenger, any name")
    ma.add_argument("--delete", metavar="ALIAS", help="remove this alias")
    ma.add_argument("--store", default="models", help="model store directory or URI (default: models)")
    _add_tracking_arg(ma)
    return parser


def add_train_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--config", required=True, help="job YAML (see jobs/configs/)")
    t.add_argument("--workers", type=int, help="number of training workers (train.num_workers)")
    t.add_argument("--gpu", action="store_true", help="one GPU per worker, nccl, bf16 autocast")
    t.add_argument("--epochs", type=int, help="train.epochs")
    t.add_argument("--storage", help="run storage: a directory or a URI such as s3://bucket/runs")
    t.add_argument("--model-store", help="model store: a directory or a URI")
    t.add_argument("--resume", action="store_true", help="continue the latest run of this config's name")
    _add_tracking_arg(t)
    t.add_argument(
        "--allow-change",
        action="append",
        default=[],
        metavar="FIELD",
        help="with --resume: let this field differ from the run's config (train.epochs, train.num_workers, ...)",
    )
    _add_cluster_args(t)


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    pairs = {
        "train.num_workers": args.workers,
        "train.epochs": args.epochs,
        "train.storage": args.storage,
        "train.model_store": args.model_store,
        "train.use_gpu": True if args.gpu else None,
    }
    return {k: v for k, v in pairs.items() if v is not None}


def print_json(obj: Any) -> None:
    """The --json object as the very last line of stdout. Ray forwards worker log lines (its
    deduplicated "[repeated Nx]" lines among them) from a background thread until the driver
    disconnects: disconnect first, so nothing can follow the JSON."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    sys.stderr.flush()
    print(json.dumps(obj, default=str), flush=True)


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
    if s["model_store"]:
        print(
            f"   model store: {s['model_store']['name']} v{s['model_store']['version']} at {s['model_store']['path']}"
        )
    for p in s["plots"]:
        print(f"   plot: {p}")
    if s["tracking_run_id"]:
        print(f"   MLflow run: {s['tracking_run_id']}")
    if args.json:
        print_json(s)
    return 0


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
            print(f"   model store: {m['name']} v{m['version']} at {m['path']}")
        for f in s["files"]:
            print(f"   wrote {f}")
        if args.json:
            print_json(s)
        return 0
    print(
        f"\n== {sweep.name}: {s['trials']} trials ({s['stopped_early']} stopped early, {s['epochs_total']} epochs); "
        f"best {s['metric']} = {s['best_metric']:.4f} with {s['best_config']}"
    )
    if s["model_store"]:
        print(
            f"   model store: {s['model_store']['name']} v{s['model_store']['version']} at {s['model_store']['path']}"
        )
    for f in s["files"]:
        print(f"   wrote {f}")
    if args.json:
        print_json(s)
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from modelfoundry.compression.config import load_compress
    from modelfoundry.compression.run import compress, plan

    overrides = {
        "name": args.name,
        "train.model_store": args.store,
        "train.storage": args.storage,
        "train.num_workers": args.workers,
        "train.epochs": args.epochs,
        "train.use_gpu": True if args.gpu else None,
    }
    cfg = load_compress(args.config, {k: v for k, v in overrides.items() if v is not None})
    p = plan(args.parent, cfg)  # every mistake fails here: no Ray work, nothing written
    if cfg.method != "quantize":  # fine-tuning and distillation train on Ray Train
        from modelfoundry.cluster import connect

        print(connect(args.address, log_to_driver=args.verbose), flush=True)
    s = compress(p, tracking_uri=args.tracking_uri)
    b, a = s["before"], s["after"]
    print(
        f"\n== {s['name']} v{s['version']}: {s['method']} {s['params']} of {s['parent']['name']} v{s['parent']['version']}"
    )
    print(f"   {'':14} {'parent':>12} {'compressed':>12} {'ratio':>7}")
    for k in [*s["ratios"], *(k for k in a if k.startswith("test_"))]:
        ratio = f"{s['ratios'][k]:7.3f}" if k in s["ratios"] else ""
        print(
            f"   {k:14} {b[k]:12.4f} {a[k]:12.4f} {ratio}"
            if isinstance(b[k], float)
            else f"   {k:14} {b[k]:12} {a[k]:12} {ratio}"
        )
    if s["agreement"] is not None:
        print(f"   agreement with the parent on the test split: {s['agreement']:.4f}")
    print(f"   path: {s['path']}")
    if args.json:
        print_json(s)
    return 0


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


def cmd_serve(args: argparse.Namespace) -> int:
    import time

    from ray import serve

    from modelfoundry.cluster import connect
    from modelfoundry.serving.auth import check_exposure

    split = json.loads(args.split) if args.split and args.split.startswith("[") else args.split
    if args.target.endswith((".yaml", ".yml")):
        from modelfoundry.serving.config_file import load_serve_config, run_serve_config

        if args.allowed_hosts:
            raise ValueError("with a serve YAML, set allowed_hosts in each application's args, not --allowed-host")
        data = load_serve_config(args.target)  # a bad file fails before Ray starts
        for app in data["applications"]:  # run_serve_config binds --host
            a = app.get("args") or {}
            check_exposure(args.host, bool(a.get("api_keys_env") or a.get("api_keys_file")), args.insecure)
        print(connect(args.address), flush=True)
        urls = run_serve_config(args.target, host=args.host, port=args.port)
    else:
        from modelfoundry.serving.apps import AppArgs, build_app, run_app
        from modelfoundry.store import parse_ref, resolve

        name, version = parse_ref(args.target)
        if version != "latest" and args.version != "latest":
            raise ValueError(f"give the version once: {args.target} or --version {args.version}")
        version = version if version != "latest" else args.version
        app_args = _app_args(
            AppArgs,
            model=name,
            version=int(version) if version.isdigit() else version,
            store=args.store,
            split=split,
            stage_models=json.loads(args.stage_models) if args.stage_models else None,
            api_keys_env=args.api_keys_env,
            api_keys_file=args.api_keys_file,
            traffic=parse_traffic(args.traffic) if args.traffic else None,
            sticky_header=args.sticky_header,
            allowed_hosts=args.allowed_hosts,
        )
        check_exposure(args.host, bool(args.api_keys_env or args.api_keys_file), args.insecure)
        if args.insecure and not (args.api_keys_env or args.api_keys_file or args.allowed_hosts):
            from modelfoundry.serving.auth import is_loopback

            if not is_loopback(args.host):
                print(
                    "note: without API keys the service answers loopback Host names only (a web page cannot "
                    "reach it by DNS rebinding); add --allowed-host NAME for the names clients use, or '*'",
                    flush=True,
                )
        resolve(args.store, name, "latest" if app_args.traffic else app_args.version)  # an unknown model first
        build_app(app_args)  # an unknown version or alias, bad keys: all fail before Ray starts
        print(connect(args.address), flush=True)
        if app_args.traffic is not None:
            from modelfoundry.serving.rollout import deploy_canary

            urls = [deploy_canary(app_args, name, host=args.host, port=args.port)]
            print(f"canary {name}: {app_args.traffic}; change it with: foundry rollout {name} --weight ARM=PERCENT")
        else:
            urls = [run_app(app_args, host=args.host, port=args.port)]
    for url in urls:
        print(f"serving at {url}  (GET {url}/v1/models, POST {url}/v1/models/<name>:<verb>, the page at {url}/)")
    try:
        deadline = time.monotonic() + args.duration if args.duration else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    serve.shutdown()
    return 0


def _app_args(cls, **kw):
    """The app's args, a mistake as one line naming the field (not pydantic's report)."""
    from pydantic import ValidationError

    try:
        return cls(**kw)
    except ValidationError as err:
        e = err.errors()[0]
        where = ".".join(map(str, e["loc"])) or "serve options"
        raise ValueError(f"{where}: {e['msg'].removeprefix('Value error, ')}") from None


def parse_traffic(text: str) -> dict[str, int]:
    """champion=90,challenger=10 -> {"champion": 90, "challenger": 10}."""
    out: dict[str, int] = {}
    for part in text.split(","):
        label, sep, weight = part.strip().partition("=")
        if not sep or not weight.strip().isdigit() or not label.strip():
            raise ValueError(f"--traffic/--weight {part.strip()!r}: give ARM=PERCENT, e.g. champion=90,challenger=10")
        if label.strip() in out:
            raise ValueError(f"--traffic/--weight names {label.strip()!r} twice")
        out[label.strip()] = int(weight)
    return out


def cmd_rollout(args: argparse.Namespace) -> int:
    import os
    import time

    from modelfoundry.cluster import LOOPBACK_ENV, connect

    if not (args.address or os.environ.get("RAY_ADDRESS")):  # the local cluster lives on 127.0.0.1
        os.environ.setdefault(LOOPBACK_ENV, "0")  # read by Ray at import (cluster.keep_on_loopback)
    from modelfoundry.serving import rollout

    weights = {}
    for w in args.weight or []:
        weights.update(parse_traffic(w))
    # the app's cluster: --address, $RAY_ADDRESS, else the local cluster foundry serve started
    try:
        connect(args.address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False)
    except ConnectionError as err:
        raise ValueError(
            f"no Ray cluster to reach ({str(err).splitlines()[0]}); is `foundry serve ... --traffic` running? "
            "Pass --address for a remote cluster"
        ) from None
    if args.status:
        _, _, live = rollout.live_canary(args.app)
        print(f"{args.app}: {live}")
        return 0
    t0 = time.perf_counter()
    if args.promote:
        out = rollout.promote(args.app, args.promote, tracking_uri=args.tracking_uri)
        weights, note = out["weights"], f"; champion -> v{out['alias']['version']} (was v{out['alias']['previous']})"
    elif args.rollback:
        out = rollout.rollback(args.app, tracking_uri=args.tracking_uri)
        weights, note = out["weights"], f"; champion back to v{out['alias']['version']}" if out["alias"] else ""
    else:
        weights, note = rollout.set_traffic(args.app, weights), ""
    print(f"{args.app}: {weights}{note} (in place, every replica serving it after {time.perf_counter() - t0:.2f}s)")
    return 0


def cmd_submit(args: argparse.Namespace, rest: list[str]) -> int:
    from modelfoundry.submit import follow, project_root, submit, upload_listing

    if args.dry_run:
        files = upload_listing(project_root(args.kind, args.working_dir))
        for path, size in files:
            print(f"{size:>12,}  {path}")
        print(f"{len(files)} files, {sum(s for _, s in files):,} bytes would be uploaded (nothing was sent)")
        return 0
    job_id = submit(args.address, args.kind, rest, args.working_dir)
    print(f"submitted job {job_id} to {args.address}", flush=True)
    if args.no_follow:
        return 0
    status = follow(args.address, job_id)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from modelfoundry.submit import client

    c = client(args.address)
    if args.action == "list":
        for job in c.list_jobs():
            print(f"{job.submission_id or job.job_id}  {job.status.value:9}  {job.entrypoint}")
        return 0
    if not args.job_id:
        raise ValueError(f"foundry jobs {args.action} needs a job id (see foundry jobs list)")
    if args.action == "logs":
        print(c.get_job_logs(args.job_id))
    else:
        print(f"stop requested: {c.stop_job(args.job_id)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from modelfoundry.export_formats import export_format
    from modelfoundry.store import parse_ref

    name, version = parse_ref(args.model)
    m = export_format(args.store, name, version, args.fmt)
    if args.json:
        print(json.dumps(m))
        return 0
    src, parity = m["source"], m["parity"]
    print(f"{src['name']} v{src['version']} ({src['family']}) -> {m['format']}: {m['path']}/{m['file']}")
    print(f"   {m['bytes']:,} bytes, sha256 {m['sha256'][:16]}...")
    print(f"   max |{parity['runtime']} - torch| = {parity['max_abs_diff']:.2e} (limit {parity['atol']:g})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from modelfoundry.store import list_models

    if args.models_command == "show":
        return _models_show(args)
    if args.models_command == "alias":
        return _models_alias(args)
    rows = list_models(args.store)
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(f"no models in {args.store}")
        return 0
    print(f"{'name':24} {'ver':>4} {'family':6} {'dataset':14} metrics / path")
    for r in rows:
        shown = {k: round(v, 4) for k, v in r["metrics"].items() if k.startswith("test_") and isinstance(v, float)}
        named = f"  @{', @'.join(r['aliases'])}" if r["aliases"] else ""
        print(
            f"{r['name']:24} {r['version']:>4} {r['family']:6} {str(r['dataset']):14} {shown}{named}\n{'':51}{r['path']}"
        )
    return 0


def _models_show(args: argparse.Namespace) -> int:
    from modelfoundry.store import describe

    d = describe(args.store, args.model)
    if args.json:
        print(json.dumps(d, default=str))
        return 0
    for i, v in enumerate(d["chain"]):
        lin = v.get("lineage") or {}
        head = f"{v['name']} v{v['version']} ({v['family']}, {v['dataset']})"
        print(
            ("" if i == 0 else "  " * i + "<- parent ") + head + (f"  aliases: {v['aliases']}" if v["aliases"] else "")
        )
        pad = "  " * (i + 1)
        shown = {k: round(x, 4) for k, x in v["metrics"].items() if k.startswith("test_") and isinstance(x, float)}
        print(f"{pad}metrics: {shown}")
        for key in ("run", "sweep", "trial"):
            if lin.get(key):
                print(f"{pad}{key}: {', '.join(f'{k}={x}' for k, x in lin[key].items() if x is not None)}")
        if lin:
            print(
                f"{pad}config sha256 {lin['config_sha256'][:16]}..., dataset {lin.get('dataset')} (split seed {lin.get('split_seed')})"
            )
            if lin.get("tracking_run_id"):
                print(f"{pad}MLflow run: {lin['tracking_run_id']}")
            print(f"{pad}libraries: {lin.get('versions')}")
        else:
            print(f"{pad}lineage: not recorded (exported before lineage was recorded)")
        print(f"{pad}path: {v['path']}")
    return 0


def _models_alias(args: argparse.Namespace) -> int:
    from modelfoundry import tracking
    from modelfoundry.store import set_alias

    if args.delete:
        if args.version or args.alias:
            raise ValueError("--delete ALIAS takes no VERSION or ALIAS arguments")
        move = set_alias(args.store, args.model, args.delete, None)
        print(f"{args.model}@{args.delete} removed (was v{move['previous']})")
    else:
        if not (args.version and args.alias):
            raise ValueError("give VERSION and ALIAS (foundry models alias NAME VERSION ALIAS), or --delete ALIAS")
        move = set_alias(args.store, args.model, args.alias, args.version)
        was = f" (was v{move['previous']})" if move["previous"] is not None else ""
        print(f"{args.model}@{args.alias} -> v{move['version']}{was}")
    mirrored = tracking.mirror_registry(tracking.registry_uri(args.tracking_uri), args.store, args.model)
    if mirrored is not None:
        print(f"   mirrored to the MLflow registry: {mirrored}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "tune": cmd_tune,
    "run": cmd_run,
    "compress": cmd_compress,
    "export": cmd_export,
    "serve": cmd_serve,
    "rollout": cmd_rollout,
    "jobs": cmd_jobs,
    "models": cmd_models,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "submit":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "submit":
            return cmd_submit(args, rest)  # the rest are the train/tune job's own options
        return COMMANDS[args.command](args)
    except ValueError as err:  # config.ConfigError is one
        print(f"foundry {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"foundry {args.command}: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as err:
        code = getattr(err, "exit_code", 1)  # an interrupted sweep: 130, as for Ctrl-C
        print(f"foundry {args.command}: {'interrupted' if code == 130 else 'failed'}: {err}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
