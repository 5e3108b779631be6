"""Sweep reports: a table of all trials (CSV), the best config (YAML), and a PNG of every trial's
metric per epoch with early-stopped trials drawn dashed."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

from modelfoundry.storage import is_uri, upload_dir


def write_reports(outcome, best_config_yaml: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory(prefix="mf-sweep-") as tmp:
        out = Path(tmp) if is_uri(outcome.path) else Path(outcome.path)
        out.mkdir(parents=True, exist_ok=True)
        columns = [k for k in outcome.trials[0] if k not in ("history", "checkpoint_path")]
        with open(out / "trials.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(outcome.trials)
        (out / "best_config.yaml").write_text(best_config_yaml)
        fig, ax = plt.subplots(figsize=(7, 4))
        for t in outcome.trials:
            if t["history"]:
                xs, ys = zip(*t["history"])
                ax.plot(
                    xs,
                    ys,
                    linestyle="--" if t["stopped_early"] else "-",
                    marker="o",
                    ms=3,
                    label=f"{t['trial_id'][-5:]}{' (stopped)' if t['stopped_early'] else ''}",
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(outcome.metric)
        ax.set_title(f"{outcome.name}: {len(outcome.trials)} trials, {outcome.details['total_epochs']} epochs in total")
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "trials.png", dpi=100)
        plt.close(fig)
        if is_uri(outcome.path):
            upload_dir(str(out), outcome.path)
    return [f"{outcome.path}/{n}" for n in ("trials.csv", "best_config.yaml", "trials.png")]
