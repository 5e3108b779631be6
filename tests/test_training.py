"""Ray Train on a real local cluster: learning, the checkpoint format, the model store, fault
tolerance, resume, and the errors a user can cause."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modelfoundry import store
from modelfoundry.config import DataSection, parse_config
from modelfoundry.data import load_splits
from modelfoundry.models import build_model
from modelfoundry.store.checkpoint import CheckpointError, checkpoint_epoch, load_checkpoint, verify, write_checkpoint
from modelfoundry.training import CapacityError, train
from modelfoundry.training.resume import latest_checkpoint
from modelfoundry.training.session import InMemoryShard
from modelfoundry.training.shares import rank_shares


def job(tmp_path: Path, name: str = "mlp-t", **train_overrides) -> dict:
    return {
        "name": name,
        "model": {"family": "mlp", "preset": "tiny"},
        "data": {"dataset": "digits"},
        "train": {
            "epochs": 4,
            "batch_size": 32,
            "lr": 0.01,
            "num_workers": 2,
            "storage": str(tmp_path / "runs"),
            "model_store": str(tmp_path / "models"),
            **train_overrides,
        },
    }


def history(outcome) -> list[tuple[int, int]]:
    meta = json.loads((Path(outcome.last_checkpoint) / "model.json").read_text())
    return [(h["epoch"], h["attempt"]) for h in meta["history"]]


def test_two_workers_learn_and_export_a_verified_checkpoint(ray_cluster, tmp_path):
    outcome = train(parse_config(job(tmp_path)))
    assert outcome.metric == "test_accuracy" and outcome.metrics["test_accuracy"] > 0.85
    meta = verify(outcome.checkpoint)
    assert meta.family == "mlp" and meta.workers == 2 and meta.dataset_name == "digits"
    assert {"torch", "ray", "modelfoundry"} <= set(meta.versions)
    assert [h["epoch"] for h in meta.history] == list(range(1, meta.epoch + 1))
    assert history(outcome) == [(e, 0) for e in (1, 2, 3, 4)]
    last = json.loads((Path(outcome.last_checkpoint) / "model.json").read_text())
    losses = [h["train_loss"] for h in last["history"]]
    assert losses[-1] < losses[0]
    # the store holds the best checkpoint; it loads and reproduces the reported accuracy
    entry = outcome.model
    assert entry["name"] == "mlp-t" and entry["version"] == 1
    loaded = load_checkpoint(store.resolve(str(tmp_path / "models"), "mlp-t").uri)
    splits = load_splits(DataSection(dataset="digits"))
    with torch.no_grad():
        pred = loaded.model(torch.from_numpy(splits.x_test)).argmax(1).numpy()
    assert np.mean(pred == splits.y_test) == pytest.approx(outcome.metrics["test_accuracy"], abs=1e-6)
    assert all(Path(p).is_file() for p in outcome.files)
    # `foundry models list --json` shows it
    out = subprocess.run(
        [sys.executable, "-m", "modelfoundry.cli", "models", "list", "--store", str(tmp_path / "models"), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(out.stdout.strip().splitlines()[-1])
    assert [(r["name"], r["version"], r["family"]) for r in rows] == [("mlp-t", 1, "mlp")]


def test_rank_shards_from_the_object_store_deal_each_example_to_one_rank(ray_cluster):
    x = np.arange(11, dtype=np.float32).reshape(11, 1) * 10
    y = np.arange(11)
    cpu = torch.device("cpu")

    def shards(equal):
        shares = rank_shares(x, y, 3, equal=equal)
        return [InMemoryShard.fetch(tuple(map(ray_cluster.put, s)), cpu) for s in shares]

    test = shards(equal=False)
    assert sorted(torch.cat([s.y for s in test]).tolist()) == list(range(11))  # each once: exact metrics
    train_shards = shards(equal=True)
    assert [len(s.y) for s in train_shards] == [4, 4, 4]  # equal: DDP ranks take the same number of steps
    assert sorted(torch.cat([s.y for s in train_shards]).tolist()) == [0, *range(11)]  # one wrapped around
    assert all(torch.equal(s.x[:, 0], s.y.float() * 10) for s in train_shards)  # pairs stay together


def test_injected_fault_resumes_from_the_last_checkpoint(ray_cluster, tmp_path):
    outcome = train(parse_config(job(tmp_path, "faulty", epochs=3, fail_at_epoch=2, max_failures=1)))
    # epoch 1 ran in attempt 0; the worker raised at epoch 2; attempt 1 started at epoch 1 + 1
    assert history(outcome) == [(1, 0), (2, 1), (3, 1)]
    assert outcome.metrics["epoch"] in (1, 2, 3)


def test_resume_continues_a_stopped_run_and_refuses_nothing_to_resume(ray_cluster, tmp_path):
    with pytest.raises(ValueError, match="nothing to resume"):
        train(parse_config(job(tmp_path, "resumable")), resume=True)
    train(parse_config(job(tmp_path, "resumable", epochs=2)), export=False)
    # a changed config is refused, naming the fields: silently training on with another learning
    # rate, or on a moved held-out split, would mix two experiments in one run
    for changes, fragment in [
        ({"lr": 0.5, "epochs": 2}, "train.lr: 0.01 -> 0.5"),
        ({"epochs": 4}, "--allow-change train.epochs"),
    ]:
        with pytest.raises(ValueError, match="differs from the one run") as err:
            train(parse_config(job(tmp_path, "resumable", **changes)), resume=True)
        assert fragment in str(err.value), str(err.value)
    moved = parse_config({**job(tmp_path, "resumable", epochs=4), "data": {"dataset": "digits", "seed": 7}})
    with pytest.raises(ValueError, match="data.seed: 0 -> 7") as err:
        train(moved, resume=True, allow_changes={"train.epochs"})
    assert "start a new run" in str(err.value)
    outcome = train(parse_config(job(tmp_path, "resumable", epochs=4)), resume=True, allow_changes={"train.epochs"})
    assert history(outcome)[-2:] == [(3, 1), (4, 1)] and history(outcome)[:2] == [(1, 0), (2, 0)]


def test_more_workers_than_the_cluster_can_ever_place_fails_at_once(ray_cluster, tmp_path):
    with pytest.raises(CapacityError, match="needs 5 CPUs; the cluster has 2"):
        train(parse_config(job(tmp_path, num_workers=5)))
    with pytest.raises(CapacityError, match="needs 2 GPUs; the cluster has 0"):
        train(parse_config(job(tmp_path, use_gpu=True)))
    # refused before any Ray Train work: no run was started, so nothing waits for a placement
    assert not (tmp_path / "runs" / "mlp-t").exists() and not (tmp_path / "models" / "mlp-t").exists()


def test_unwritable_storage_is_refused_before_training(ray_cluster, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot be written"):
        train(parse_config(job(tmp_path, storage=str(blocker / "runs"))))


def test_tampered_checkpoint_is_refused_and_never_published(ray_cluster, tmp_path):
    outcome = train(parse_config(job(tmp_path, "tamper", epochs=1, num_workers=1)), export=False)
    ckpt = Path(outcome.checkpoint)
    state = torch.load(ckpt / "model.pt", weights_only=True)
    state["head.bias"] += 1.0
    torch.save(state, ckpt / "model.pt")
    with pytest.raises(CheckpointError, match="failed its integrity check"):
        load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="failed its integrity check"):
        store.export(str(ckpt), str(tmp_path / "models"), "tamper")
    assert store.list_models(str(tmp_path / "models")) == []
    (ckpt / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(ckpt)


def test_a_run_started_from_another_runs_checkpoint_takes_its_own_hyperparameters(ray_cluster, tmp_path):
    """What a PBT exploit does to a TorchTrainer trial: the donor's weights, optimizer state and
    epoch, the new config's learning rate."""
    from modelfoundry.data import load_splits
    from modelfoundry.training.trainer import make_trainer

    donor = train(parse_config(job(tmp_path, "donor", epochs=2, num_workers=1)), export=False)
    cfg = parse_config(job(tmp_path, "seeded", epochs=4, num_workers=1, lr=0.003))
    result = make_trainer(
        cfg, load_splits(cfg.data), str(tmp_path / "runs"), "seeded-run", start_from=donor.last_checkpoint
    ).fit()
    meta = json.loads((Path(result.checkpoint.path) / "model.json").read_text())
    epochs = [(h["epoch"], h["lr"]) for h in meta["history"]]
    assert [e for e, _ in epochs] == [1, 2, 3, 4]  # the donor's two epochs, then this run's
    assert [lr for _, lr in epochs] == [pytest.approx(0.01)] * 2 + [pytest.approx(0.003)] * 2


def test_the_resume_config_check_reads_and_writes_uri_run_paths(tmp_path, capsys):
    """Runs on a cluster live under storage URIs: job.json goes through pyarrow's filesystem."""
    from modelfoundry.training.resume import check_resume_config, write_run_config

    cfg = parse_config(job(tmp_path, "uri-run"))
    run = f"file://{tmp_path}/runs/uri-run/run-1"
    write_run_config(run, cfg)
    assert (tmp_path / "runs" / "uri-run" / "run-1" / "job.json").is_file()
    check_resume_config(run, cfg, set())  # the same config: nothing to say
    with pytest.raises(ValueError, match="train.lr: 0.01 -> 0.5"):
        check_resume_config(run, parse_config(job(tmp_path, "uri-run", lr=0.5)), set())
    check_resume_config(f"file://{tmp_path}/runs/uri-run/older", cfg, set())  # a run from before job.json
    assert "has no job.json (an older run); config not checked" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["local", "uri"])
def test_resume_finds_the_newest_complete_checkpoint_on_storage(tmp_path, kind):
    """What --resume falls back on when Ray Train's record lags the files (resume.latest_checkpoint)."""
    model = build_model("mlp", "tiny", input_shape=(1, 8, 8), output_dim=10)
    run = tmp_path / "run"
    for epoch in (2, 3, 1):
        write_checkpoint(run / f"checkpoint_{epoch}", model, dataset={}, metrics={"epoch": epoch})
    (run / "checkpoint_4").mkdir()  # an upload under way: no model.json yet
    base = str(run) if kind == "local" else f"file://{run}"
    assert latest_checkpoint(base) == f"{base}/checkpoint_3"
    assert checkpoint_epoch(f"{base}/checkpoint_2") == 2 and checkpoint_epoch(f"{base}/checkpoint_4") == 0
    (run / "checkpoint_3" / "model.pt").write_bytes(b"torn")  # damaged after it was written
    # a local one is verified here; on a URI, the worker that loads it verifies it (and refuses it)
    assert latest_checkpoint(base) == f"{base}/checkpoint_{2 if kind == 'local' else 3}"
    assert latest_checkpoint(str(tmp_path / "no-run")) is None
