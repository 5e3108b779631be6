"""ASHA vs FIFO on the same sweep, side by side in one run: wall time, total epochs, best metric.

    python bench/tune_asha_vs_fifo.py [--config jobs/configs/tune_cnn_mnist.yaml] [--samples N]

Both runs use the same search space, seed and sample count (random search; the config's
num_samples unless --samples), one after another on one local cluster. The default sweep's
epochs take seconds; on the digits sweep (epochs of ~0.2 s) both schedulers pay mostly the same
fixed start-up cost (Tune, the first trial process, imports), which caps what ASHA can save.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from machine import finish, quiet_start  # bench/machine.py (the script's folder is on sys.path)
from modelfoundry.cluster import connect
from modelfoundry.tuning import parse_sweep, run_sweep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="jobs/configs/tune_cnn_mnist.yaml")
    ap.add_argument("--samples", type=int, default=None, help="trials per scheduler (default: the config's)")
    args = ap.parse_args()
    path = Path(args.config)
    data = yaml.safe_load(path.read_text())
    connect()
    start = quiet_start()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scheduler in ("fifo", "asha"):
            d = {**data, "name": f"{data['name']}-{scheduler}"}
            d["overrides"] = {
                **(d.get("overrides") or {}),
                "train.storage": f"{tmp}/runs",
                "train.model_store": f"{tmp}/models",
            }
            d["tune"] = {**d["tune"], "scheduler": scheduler, "num_samples": args.samples or d["tune"]["num_samples"]}
            t0 = time.perf_counter()
            s = run_sweep(parse_sweep(d, str(path), path.parent), export=False).summary()
            rows[scheduler] = {
                "wall_s": time.perf_counter() - t0,
                "epochs": s["epochs_total"],
                "best": s["best_metric"],
                "metric": s["metric"],
                "stopped_early": s["stopped_early"],
            }
    machine = finish(start)
    f, a = rows["fifo"], rows["asha"]
    print(f"\n{'scheduler':9} {'wall s':>8} {'epochs':>7} {'best ' + f['metric']:>20} {'stopped':>8}")
    for k, r in rows.items():
        print(f"{k:9} {r['wall_s']:8.1f} {r['epochs']:7d} {r['best']:20.4f} {r['stopped_early']:8d}")
    print(
        f"ASHA/FIFO wall time {a['wall_s'] / f['wall_s']:.2f}x, epochs {a['epochs'] / f['epochs']:.2f}x, "
        f"best metric difference {100 * (a['best'] - f['best']):+.2f} points"
    )
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/tune_asha_vs_fifo.json").write_text(json.dumps({**rows, "machine": machine}, indent=2))


if __name__ == "__main__":
    main()
