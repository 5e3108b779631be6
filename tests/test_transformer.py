"""The language-model family on a real local Ray cluster: it learns the held-out text below the
unigram baseline, FSDP and DDP agree, FSDP checkpoints are sharded (for resuming) beside the full
weights gathered at save time, verified, exported without the shards, and an FSDP run on URI
storage resumes from its sharded checkpoint after a worker is killed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cluster_procs import kill_a_train_worker_when
from modelfoundry.config import parse_config
from modelfoundry.data.text import CharTokenizer
from modelfoundry.models.transformer import generate
from modelfoundry.store.checkpoint import CheckpointError, load_checkpoint, verify
from modelfoundry.training import train

# FSDP reduce-scatters where DDP all-reduces: the same sums in another order, so per-epoch losses
# agree to float32 rounding, not bit for bit. Stated tolerance: 1e-4 relative.
LOSS_RTOL = 1e-4


def lm_job(tmp_path: Path, name: str, **train_overrides) -> dict:
    return {
        "name": name,
        "model": {"family": "transformer", "preset": "tiny"},
        "data": {"dataset": "pydocs", "limit": 600},
        "train": {
            "epochs": 3,
            "batch_size": 32,
            "lr": 0.003,
            "optimizer": "adamw",
            "num_workers": 2,
            "storage": str(tmp_path / "runs"),
            "model_store": str(tmp_path / "models"),
            **train_overrides,
        },
    }


def history(checkpoint: str) -> list[dict]:
    return json.loads((Path(checkpoint) / "model.json").read_text())["history"]


def test_fsdp_and_ddp_agree_and_fsdp_checkpoints_are_sharded_and_verified(ray_cluster, tmp_path):
    ddp = train(parse_config(lm_job(tmp_path, "lm-ddp")))
    fsdp = train(parse_config(lm_job(tmp_path, "lm-fsdp", strategy="fsdp")))
    a, b = history(ddp.last_checkpoint), history(fsdp.last_checkpoint)
    for key in ("train_loss", "test_loss"):
        got, want = [h[key] for h in b], [h[key] for h in a]
        torch.testing.assert_close(got, want, rtol=LOSS_RTOL, atol=0, msg=key)
    # it learns: below the unigram baseline on held-out text, and falling
    assert fsdp.metric == "test_bpc" and fsdp.metrics["test_bpc"] < fsdp.metrics["unigram_bpc"]
    assert b[-1]["test_bpc"] < b[0]["test_bpc"]

    ckpt = Path(fsdp.checkpoint)
    meta = verify(ckpt)
    # the shards (for resuming) beside model.pt: the full weights, gathered when the checkpoint was
    # written, which is all that serving and export read (DCP's .metadata is a pickle)
    assert meta.strategy == "fsdp" and (ckpt / "model.pt").is_file() and meta.sha256
    assert {Path(f).name for f in meta.sharded} >= {"__0_0.distcp", "__1_0.distcp", ".metadata"}
    published = load_checkpoint(fsdp.model["path"])  # the store holds model.pt only
    assert "sharded" not in published.meta and not (Path(fsdp.model["path"]) / "sharded").exists()
    direct = load_checkpoint(ckpt)  # a sharded training checkpoint loads too, from its model.pt
    for (k, v), w in zip(published.model.state_dict().items(), direct.model.state_dict().values()):
        assert torch.equal(v, w), k
    tok = CharTokenizer.from_spec(published.meta.tokenizer)
    text = tok.decode(list(generate(published.model, tok.encode("The "), 20)))
    assert len(text) == 20

    bad = tmp_path / "tampered"
    shutil.copytree(ckpt, bad)
    shard = next(p for p in bad.rglob("__1_0.distcp"))
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="failed its integrity check"):
        load_checkpoint(bad)


def test_fsdp_resumes_from_its_sharded_checkpoint_after_a_worker_is_killed(ray_cluster, tmp_path):
    root = tmp_path / "runs" / "lm-kill"

    def complete() -> list[Path]:
        return [c for c in sorted(root.glob("run-*/checkpoint_2*")) if (c / "model.json").is_file()]

    # storage as a URI (what a cluster uses): every worker uploads its shards through pyarrow
    storage = {"storage": f"file://{tmp_path}/runs", "model_store": f"file://{tmp_path}/models"}
    cfg = parse_config(lm_job(tmp_path, "lm-kill", strategy="fsdp", epochs=6, max_failures=2, **storage))
    with kill_a_train_worker_when(lambda: len(complete()) >= 2) as killed:
        outcome = train(cfg)
    assert killed, "no worker was found to kill"
    hist = [(h["epoch"], h["attempt"]) for h in history(outcome.last_checkpoint)]
    assert [e for e, _ in hist] == list(range(1, 7)), hist  # every epoch once: resumed, not restarted
    assert hist[-1][1] >= 1
    assert verify(outcome.last_checkpoint).sharded
    assert load_checkpoint(outcome.model["path"]).meta.sha256  # exported to a URI store, consolidated
