"""Compression benchmark: every method on the MNIST (or digits) MLP, CNN and LSTM, side by side.

    python bench/compress.py                       # MNIST: mlp, cnn, rnn (~30 min on 2 cores)
    python bench/compress.py --dataset digits      # the quick run
    python bench/compress.py --families cnn --teacher-epochs 4

For each family: train the parent with its shipped job config (2 Ray Train workers), then make
dynamic int8 (all), static int8 (CNN), structured pruning at 2 ratios with fine-tuning, and for
the CNN a distilled student (the tiny CNN preset, <= 1/10 of the parameters) beside the same
student trained without the teacher. Then, in this one process with 1 torch thread, every
variant of the family is measured in interleaved rounds: size of model.pt, parameters, p50
latency at batch 1 and 64, test accuracy. Load average is recorded before and after.
Results: bench/results/compress.json and a markdown table on stdout (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from machine import finish, quiet_start  # bench/machine.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    ap.add_argument("--families", nargs="+", default=["mlp", "cnn", "rnn"])
    ap.add_argument("--teacher-epochs", type=int, help="override the job configs' epochs for the parents")
    ap.add_argument("--finetune-epochs", type=int, default=3)
    ap.add_argument("--student-epochs", type=int, default=10)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    ap.add_argument("--rounds", type=int, default=30, help="latency rounds (each: 10 calls of every variant)")
    ap.add_argument("--workdir", default=None, help="runs/ and models/ go here (default: a temp dir)")
    ap.add_argument(
        "--measure-only",
        action="store_true",
        help="no training: measure the variants an earlier run left in --workdir (e.g. again on a quiet machine)",
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "compress.json"))
    args = ap.parse_args()

    from modelfoundry.cluster import connect
    from modelfoundry.compression.config import parse_compress
    from modelfoundry.compression.measure import evaluate, latencies_ms, parameters, size_bytes
    from modelfoundry.compression.run import compress, plan
    from modelfoundry.config import load_config, with_overrides
    from modelfoundry.data import load_splits
    from modelfoundry.store.checkpoint import load_checkpoint
    from modelfoundry.training import train

    work = Path(args.workdir or tempfile.mkdtemp(prefix="mf-bench-compress-"))
    models, runs = str(work / "models"), str(work / "runs")
    if not args.measure_only:  # measuring needs no cluster (its idle processes would only add load)
        print(connect(), flush=True)
    start = quiet_start()
    results: dict = {"dataset": args.dataset, "families": {}}
    t0 = time.perf_counter()

    def c(parent: str, name: str, **data) -> dict:
        train_section = {"storage": runs, "model_store": models, **data.pop("train", {})}
        cfg = parse_compress({"name": name, "measure": {"rounds": 1}, "train": train_section, **data})
        return compress(plan(parent, cfg))

    for family in args.families:
        cfg = load_config(ROOT / "jobs" / "configs" / f"{family}_{args.dataset}.yaml")
        over = {"train.storage": runs, "train.model_store": models}
        if args.teacher_epochs:
            over["train.epochs"] = args.teacher_epochs
        cfg = with_overrides(cfg, over)
        parent = cfg.name
        if args.measure_only:
            from modelfoundry import store

            names = {"fp32": parent, "dynamic-int8": f"{parent}-int8", "static-int8": f"{parent}-static"}
            names |= {f"pruned {r:g}": f"{parent}-p{round(r * 100)}" for r in args.ratios}
            names |= {"student, distilled": f"{parent}-student", "student, no teacher": f"{parent}-student-alone"}
            have = {m["name"] for m in store.list_models(models)}
            variants = {k: store.resolve(models, n).uri for k, n in names.items() if n in have}
        else:
            variants = make_variants(args, family, cfg, c, train, with_overrides)

        # ---- side by side: one process, 1 thread, interleaved rounds
        splits = load_splits(cfg.data)
        loaded = {k: load_checkpoint(p) for k, p in variants.items()}
        nets = {k: v.model for k, v in loaded.items()}
        rows = {}
        for k, v in loaded.items():
            rows[k] = {
                "size_bytes": size_bytes(variants[k]),
                "parameters": parameters(v.meta),
                "test_accuracy": evaluate(nets[k], "classification", splits.x_test, splits.y_test, 1.0)[
                    "test_accuracy"
                ],
                "path": variants[k],
            }
        shape = tuple(splits.spec.input_shape)
        for b in (1, 64):
            for k, ms in latencies_ms(nets, shape, b, args.rounds).items():
                rows[k][f"p50_ms_b{b}"] = ms
        results["families"][family] = rows
        print(table(family, rows), flush=True)

    results["machine"] = finish(start)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"{results['wall_s']} s; {args.out}")
    return 0


def make_variants(args, family: str, cfg, c, train, with_overrides) -> dict[str, str]:
    """Train the parent and make every variant; {label: store path}."""
    parent = cfg.name
    outcome = train(cfg)
    tr = {"batch_size": cfg.train.batch_size, "num_workers": 2}
    variants = {"fp32": outcome.model["path"]}
    variants["dynamic-int8"] = c(parent, f"{parent}-int8", method="quantize")["path"]
    if family == "cnn":
        variants["static-int8"] = c(parent, f"{parent}-static", method="quantize", quantize={"scheme": "static-int8"})[
            "path"
        ]
    for r in args.ratios:
        variants[f"pruned {r:g}"] = c(
            parent,
            f"{parent}-p{round(r * 100)}",
            method="prune",
            prune={"ratio": r},
            train={**tr, "epochs": args.finetune_epochs, "lr": cfg.train.lr, "lr_schedule": "cosine"},
        )["path"]
    if family == "cnn":
        student = {"family": "cnn", "preset": "tiny"}
        st = {**tr, "epochs": args.student_epochs, "lr": 0.003, "lr_schedule": "cosine"}
        variants["student, distilled"] = c(
            parent, f"{parent}-student", method="distill", distill={"student": student}, train=st
        )["path"]
        alone = with_overrides(
            cfg,
            {
                "name": f"{parent}-student-alone",
                "model.preset": "tiny",
                "model.channels": [8, 16],
                "model.hidden": 32,
                "model.dropout": 0.0,
                **{f"train.{k}": v for k, v in st.items()},
            },
        )
        variants["student, no teacher"] = train(alone).model["path"]
    return variants


def table(family: str, rows: dict) -> str:
    base = rows["fp32"]
    lines = [
        f"\n{family}",
        "| variant | size (bytes) | x | parameters | x | p50 b1 (ms) | x | p50 b64 (ms) | x | accuracy | delta |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, r in rows.items():
        lines.append(
            f"| {k} | {r['size_bytes']:,} | {r['size_bytes'] / base['size_bytes']:.2f} | {r['parameters']:,} | "
            f"{r['parameters'] / base['parameters']:.2f} | {r['p50_ms_b1']:.3f} | {r['p50_ms_b1'] / base['p50_ms_b1']:.2f} | "
            f"{r['p50_ms_b64']:.3f} | {r['p50_ms_b64'] / base['p50_ms_b64']:.2f} | {100 * r['test_accuracy']:.2f}% | "
            f"{100 * (r['test_accuracy'] - base['test_accuracy']):+.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
