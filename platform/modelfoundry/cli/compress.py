"""`foundry compress` and `foundry export`: a stored model in, a smaller one or another format out."""

from __future__ import annotations

import argparse
import json

from modelfoundry.cli.table import Command, add_cluster_args, add_store_arg, add_tracking_arg, print_json


def _compress_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("parent", help="the model to compress: NAME or NAME:VERSION in the model store")
    c.add_argument("--config", required=True, help="compression YAML (see jobs/configs/compress_*.yaml)")
    c.add_argument("--name", help="model-store name of the result (default: from the config, else <parent>-<method>)")
    c.add_argument("--store", help="model store directory or URI (default: the config's train.model_store)")
    c.add_argument("--storage", help="run storage for fine-tuning / distillation (train.storage)")
    c.add_argument("--workers", type=int, help="training workers for fine-tuning / distillation")
    c.add_argument("--epochs", type=int, help="fine-tuning / distillation epochs")
    c.add_argument("--gpu", action="store_true", help="fine-tune / distil on GPUs (one per worker)")
    add_tracking_arg(c)
    add_cluster_args(c)


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
    s = compress(p, tracking_uri=args.tracking_uri).summary()
    b, a = s["before"], s["after"]
    print(
        f"\n== {s['name']} v{s['version']}: {s['method']} {s['params']} of {s['parent']['name']} v{s['parent']['version']}"
    )
    print(f"   {'':14} {'parent':>12} {'compressed':>12} {'ratio':>7}")
    for k in [*s["ratios"], *(k for k in a if k.startswith("test_"))]:
        ratio = f"{s['ratios'][k]:7.3f}" if k in s["ratios"] else ""
        row = f"{b[k]:12.4f} {a[k]:12.4f}" if isinstance(b[k], float) else f"{b[k]:12} {a[k]:12}"
        print(f"   {k:14} {row} {ratio}")
    if s["agreement"] is not None:
        print(f"   agreement with the parent on the test split: {s['agreement']:.4f}")
    print(f"   path: {s['path']}")
    if args.json:
        print_json(s)
    return 0


def _export_args(e: argparse.ArgumentParser) -> None:
    e.add_argument("model", help="NAME or NAME:VERSION in the model store (default version: latest)")
    e.add_argument("--format", required=True, dest="fmt", choices=["onnx", "safetensors", "torchscript"])
    add_store_arg(e)
    e.add_argument("--json", action="store_true", help="print export.json as one JSON line")


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


COMMANDS = [
    Command(
        "compress",
        "quantize, prune or distil a model-store entry into a new entry",
        "Quantize, prune or distil a model-store entry into a new entry with its lineage, measuring "
        "size, speed and test metrics against the parent.",
        "foundry compress cnn-digits --config jobs/configs/compress_int8.yaml",
        _compress_args,
        cmd_compress,
    ),
    Command(
        "export",
        "write a model-store version as ONNX, safetensors or TorchScript, checked against PyTorch",
        "Write NAME[:VERSION] from the model store in a format other runtimes load, next to it "
        "(<store>/NAME/VERSION/exports/FORMAT/). The export is run on a batch of another size and must match "
        "the PyTorch model before it is published; export.json records the difference and the lineage.",
        "foundry export cnn-digits --format onnx --store models",
        _export_args,
        cmd_export,
    ),
]
