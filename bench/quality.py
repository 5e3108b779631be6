"""Train shipped configs and record the held-out quality each reaches (docs/results.md).

    python bench/quality.py jobs/configs/cnn_digits.yaml jobs/configs/mlp_digits.yaml ...

Each config runs through the same library call as `foundry train`, one after another on one
local Ray cluster; results go to bench/results/quality.json and a table is printed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from machine import finish, quiet_start  # bench/machine.py (the script's folder is on sys.path)
from modelfoundry.cluster import connect
from modelfoundry.config import load_config
from modelfoundry.training import train

BARS = {  # config name -> (metric, bar, direction); sunspots is relative to persistence
    "mlp-digits": ("test_accuracy", 0.96, "max"),
    "cnn-digits": ("test_accuracy", 0.975, "max"),
    "rnn-digits": ("test_accuracy", 0.95, "max"),
    "cnn-mnist": ("test_accuracy", 0.99, "max"),
    "mlp-mnist": ("test_accuracy", 0.98, "max"),
    "rnn-mnist": ("test_accuracy", 0.98, "max"),
    "vae-mnist": ("test_neg_elbo", 100.0, "min"),
    "rnn-sunspots": ("test_mae", 0.75, "min"),
    "gpt-pydocs": ("test_bpc", 2.3, "min"),  # bits per character; the unigram baseline is ~4.67
}


def main(paths: list[str]) -> None:
    out = Path("bench/results/quality.json")
    results = json.loads(out.read_text()) if out.exists() else {}
    connect()
    start = quiet_start()
    for path in paths:
        cfg = load_config(
            path, {"train.storage": "/tmp/mf-quality/runs", "train.model_store": "/tmp/mf-quality/models"}
        )
        t0 = time.time()
        outcome = train(cfg)
        m = outcome.metrics
        row = {
            "config": path,
            "metric": outcome.metric,
            "value": m[outcome.metric],
            "epoch": m["epoch"],
            "wall_s": round(time.time() - t0, 1),
            "metrics": m,
            "machine": finish(start),
        }
        if cfg.name in BARS:
            metric, bar, direction = BARS[cfg.name]
            value = m[metric] / m["persistence_mae"] if cfg.name == "rnn-sunspots" else m[metric]
            row["bar"] = bar
            row["passes"] = value >= bar if direction == "max" else value <= bar
            row["compared"] = value
        results[cfg.name] = row
        out.write_text(json.dumps(results, indent=2))
        print(
            f"QUALITY {cfg.name}: {outcome.metric}={m[outcome.metric]:.4f} row={row.get('compared')} "
            f"bar={row.get('bar')} passes={row.get('passes')} ({row['wall_s']}s)",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
