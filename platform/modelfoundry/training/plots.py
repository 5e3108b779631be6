"""Learning-curve PNGs (and VAE sample/reconstruction grids, language-model text samples)
written next to a run."""

from __future__ import annotations

import tempfile
from pathlib import Path

from modelfoundry.storage import download_dir, is_uri, upload_dir
from modelfoundry.store.checkpoint import CheckpointMeta, load_checkpoint, read_meta
from modelfoundry.tasks import task_spec


def plot_run(checkpoint: str, run_path: str) -> list[str]:
    """Write learning_curves.png (+ vae_samples.png for a VAE) into the run directory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with tempfile.TemporaryDirectory(prefix="mf-plot-") as tmp:
        meta = read_meta(download_dir(checkpoint, f"{tmp}/ckpt"))
        out = Path(tmp) / "plots" if is_uri(run_path) else Path(run_path)
        out.mkdir(parents=True, exist_ok=True)
        history = meta.history or []
        names = sorted({k for h in history for k in h if k.startswith(("train_", "test_"))})
        groups = sorted({n.split("_", 1)[1] for n in names})
        sizes = {h.get("workers") for h in history} - {None}
        panels = len(groups) + (len(sizes) > 1)  # an elastic run that resized: its workers too
        fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.2), squeeze=False)
        if len(sizes) > 1:
            _workers_panel(axes[0][-1], history)
        for ax, g in zip(axes[0], groups):
            for split in ("train", "test"):
                pts = [(h["epoch"], h[f"{split}_{g}"]) for h in history if f"{split}_{g}" in h]
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, label=split)
            ax.set_title(g)
            ax.set_xlabel("epoch")
            ax.legend()
        fig.suptitle(f"{meta.run or ''} ({meta.family} on {meta.dataset_name})")
        fig.tight_layout()
        fig.savefig(out / "learning_curves.png", dpi=100)
        plt.close(fig)
        files = ["learning_curves.png"]
        if meta.family == "vae":
            files.append(_vae_grid(checkpoint, meta, out / "vae_samples.png", plt))
        if meta.task and task_spec(meta.task).output == "text":
            files.append(_text_samples(checkpoint, out / "samples.txt"))
        if is_uri(run_path):
            upload_dir(str(out), run_path)
    return [f"{run_path.rstrip('/')}/{f}" for f in files]


def _workers_panel(ax, history: list[dict]) -> None:
    """Each epoch as a bar at its worker count over the run's time: the gaps between bars are the
    restarts (a resize or a failure); a new attempt's first epoch is marked by a dotted line."""
    t0 = history[0]["started_at"]
    for before, h in zip([None, *history], history):
        x = h["started_at"] - t0
        ax.hlines(h["workers"], x, x + h.get("epoch_time_s", 0.0), lw=6)
        if before is not None and h.get("attempt") != before.get("attempt"):
            ax.axvline(x, color="grey", lw=0.8, ls=":")
    ax.set_title("workers per epoch (gaps: restarts)")
    ax.set_xlabel("seconds since epoch 1 started")
    ax.set_ylim(0, max(h["workers"] for h in history) + 0.5)


TEXT_PROMPTS = ("The ", "def ", "In Python, ")


def _text_samples(checkpoint: str, path: Path) -> str:
    """Greedy and sampled continuations of a few prompts: what the model learnt, at a glance."""
    from modelfoundry.data.text import CharTokenizer
    from modelfoundry.models.transformer import generate

    loaded = load_checkpoint(checkpoint)
    tok = CharTokenizer.from_spec(loaded.meta.tokenizer)
    lines = [f"# {loaded.meta.run or ''}: test_bpc {loaded.meta.metrics.get('test_bpc', float('nan')):.3f}"]
    for prompt in TEXT_PROMPTS:
        if tok.unknown(prompt):
            continue
        for label, kwargs in (("greedy", {}), ("T=0.8 top_k=20 seed=0", {"temperature": 0.8, "top_k": 20, "seed": 0})):
            text = tok.decode(list(generate(loaded.model, tok.encode(prompt), 200, **kwargs)))
            lines.append(f"\n## {prompt!r} ({label})\n{prompt}{text}")
    path.write_text("\n".join(lines) + "\n")
    return path.name


def _vae_grid(checkpoint: str, meta: CheckpointMeta, path: Path, plt) -> str:
    import torch

    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits

    vae = load_checkpoint(checkpoint).model
    splits = load_splits(DataSection(**meta.dataset["config"]))
    x = torch.from_numpy(splits.x_test[:8])
    with torch.no_grad():
        recon = torch.sigmoid(vae(x))
        samples = vae.sample(8, torch.Generator().manual_seed(0))
    rows = [("test", x), ("reconstruction", recon), ("prior sample", samples)]
    fig, axes = plt.subplots(3, 8, figsize=(8, 3.3))
    for r, (label, imgs) in enumerate(rows):
        for c in range(8):
            axes[r, c].imshow(imgs[c, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[r, c].axis("off")
        axes[r, 0].set_title(label, fontsize=7, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name
