"""Training under faults, on real processes and a real filesystem: a Train worker SIGKILLed
mid-epoch, the driver of `foundry train` killed and the run resumed, the run's storage filling up
during a checkpoint. Nothing is lost beyond the epoch in progress; the last good checkpoint
stays usable."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from cluster_procs import driver_env, foundry_cmd, kill_a_train_worker_when, kill_driver_when
from modelfoundry.config import parse_config
from modelfoundry.store.checkpoint import CheckpointError, load_checkpoint, verify
from modelfoundry.training import train
from test_training import job  # the same small MLP job on digits


def checkpoints(run_root: Path) -> list[Path]:
    return sorted(run_root.glob("run-*/checkpoint_*"))


def complete(run_root: Path) -> list[Path]:
    return [c for c in checkpoints(run_root) if (c / "model.json").is_file()]


def epoch_of(checkpoint: Path) -> int:
    return json.loads((checkpoint / "model.json").read_text())["metrics"]["epoch"]


def history_of(checkpoint: str | Path) -> list[tuple[int, int]]:
    meta = json.loads((Path(checkpoint) / "model.json").read_text())
    return [(h["epoch"], h["attempt"]) for h in meta["history"]]


def test_a_train_worker_sigkilled_mid_run_is_replaced_and_the_run_resumes(ray_cluster, tmp_path):
    # epochs enough that the run is still going when the kill lands: on a quiet machine an epoch
    # of this MLP takes 0.07 s and finding the worker (Ray's state API) about a second, so a
    # 10-epoch run could end first (it did, once, in a full-suite run)
    epochs = 60
    cfg = parse_config(job(tmp_path, "worker-kill", epochs=epochs, max_failures=2))
    root = tmp_path / "runs" / "worker-kill"
    with kill_a_train_worker_when(lambda: len(checkpoints(root)) >= 2) as killed:
        outcome = train(cfg)
    assert killed, "no worker was found to kill"
    hist = history_of(outcome.last_checkpoint)
    # every epoch once, in order; a second attempt took over after the kill, from a checkpoint
    assert [e for e, _ in hist] == list(range(1, epochs + 1)), hist
    assert hist[0][1] == 0 and hist[-1][1] >= 1
    assert outcome.metrics["test_accuracy"] > 0.8
    load_checkpoint(outcome.model["path"])


def test_a_killed_train_driver_resumes_from_its_last_checkpoint(tmp_path):
    cfg = job(tmp_path, "driver-kill", epochs=12)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env, _ = driver_env(tmp_path, "mfd")
    cmd = foundry_cmd("train", "--config", str(path))
    root = tmp_path / "runs" / "driver-kill"
    kill_driver_when([*cmd, "--verbose"], env, tmp_path / "driver.log", lambda: len(complete(root)) >= 2)
    before = complete(root)
    assert 2 <= len(before) and not list((tmp_path / "models").glob("*/*")), (tmp_path / "driver.log").read_text()[
        -3000:
    ]
    last_epoch = max(json.loads((c / "model.json").read_text())["metrics"]["epoch"] for c in before)
    assert last_epoch < 12, "the driver must die mid-run"
    out = subprocess.run([*cmd, "--resume", "--json"], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])  # the JSON is the last line
    # the console: one line per epoch from the driver (off a terminal), none of Ray Train's own
    # per-report lines, which --verbose shows and Ray's log files keep
    assert "[driver-kill] epoch 12/12 " in out.stdout, out.stdout[-3000:]
    for internal in ("Reporting training result", "TrainingReport(", "Checkpoint successfully created"):
        assert internal not in out.stdout + out.stderr
        assert internal in (tmp_path / "driver.log").read_text()  # the first driver ran with --verbose
    worker_logs = "".join(
        p.read_text(errors="replace") for p in Path(env["RAY_TMPDIR"]).rglob("worker-*.*")
    )  # .out and .err
    assert "Reporting training result" in worker_logs
    hist = history_of(max(complete(root), key=epoch_of))
    epochs = [e for e, _ in hist]
    assert epochs == list(range(1, 13)), hist  # nothing trained twice, nothing skipped
    resumed = [e for e, a in hist if a > 0]
    assert resumed and resumed[0] <= last_epoch + 1, (
        resumed,
        last_epoch,
        hist,
        out.stdout[-3000:],
    )  # from the last checkpoint
    assert summary["model_store"]["version"] == 1 and summary["best"] > 0.8


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_storage_filling_up_during_a_checkpoint_leaves_the_last_good_one_usable(ray_cluster, tmp_path):
    mount = Path(tempfile.mkdtemp(prefix="mf-full-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)], check=True)
    try:
        # a checkpoint of this MLP is ~60 KB (weights 18 KB + Adam state 37 KB): two fit, the third
        # cannot
        base = job(tmp_path, "disk-full", epochs=6, keep_checkpoints=10, max_failures=1, storage=str(mount / "runs"))
        base["model"] = {"family": "mlp", "preset": "default", "hidden_sizes": [64]}
        with pytest.raises(RuntimeError) as err:
            train(parse_config(base))
        assert "No space left on device" in str(err.value), str(err.value)  # the cause, named
        root = mount / "runs" / "disk-full"
        complete, broken = [], []
        for c in checkpoints(root):
            try:
                verify(c)
                complete.append(c)
            except CheckpointError:
                broken.append(c)
        assert complete, [(c.name, sorted((f.name, f.stat().st_size) for f in c.iterdir())) for c in checkpoints(root)]
        last_good = max(complete, key=epoch_of)
        assert load_checkpoint(last_good).meta.metrics["epoch"] >= 1  # sha256-checked, loads
        # the operator frees space; --resume goes on from the last good checkpoint to the end
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        outcome = train(parse_config(base), resume=True)
        hist = history_of(outcome.last_checkpoint)
        assert [e for e, _ in hist] == list(range(1, 7)), hist
        print(f"disk full: {len(complete)} complete and {len(broken)} broken checkpoints; resumed to epoch 6")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_run_resumed_from_a_step_snapshot_equals_a_run_that_never_failed(ray_cluster, tmp_path):
    """train.checkpoint_every_steps: a fault mid-epoch loses only the steps since the last
    snapshot; the resumed run sees exactly the examples (and dropout draws) a fault-free run does,
    so its weights and every epoch's metrics are bit-for-bit the same."""
    import torch

    steps = {"epochs": 3, "checkpoint_every_steps": 5}
    clean = train(parse_config(job(tmp_path, "snap-clean", **steps)))
    faulty = train(parse_config(job(tmp_path, "snap-fault", **steps, fail_at_step=30, max_failures=1)))
    (recovery,) = faulty.summary()["recoveries"]  # one restart, in the middle of epoch 2 (22 steps each)
    assert recovery["attempt"] == 1 and recovery["resumed_at"][0] == 2 and 0 < recovery["resumed_at"][1] < 22
    a, b = (torch.load(Path(o.last_checkpoint, "model.pt"), weights_only=True) for o in (clean, faulty))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = (json.loads(Path(o.last_checkpoint, "model.json").read_text())["history"] for o in (clean, faulty))
    keys = ("epoch", "workers", "train_accuracy", "test_loss", "test_accuracy")
    assert [[h[k] for k in keys] for h in ha] == [[h[k] for k in keys] for h in hb]
    # the resumed epoch's loss total: the snapshot's (float64) plus the rest, summed in another order
    assert [h["train_loss"] for h in hb] == pytest.approx([h["train_loss"] for h in ha], rel=1e-6)
    assert [h["attempt"] for h in hb] == [0, 1, 1]


@pytest.mark.parametrize(
    "train_fields, data_fields, message",
    [
        ({"checkpoint_every_steps": 5, "strategy": "fsdp"}, {}, "needs strategy ddp"),
        ({"checkpoint_every_steps": 5}, {"augment": True}, "no index"),
        ({"checkpoint_every_steps": 5}, {"in_memory": False}, "no index"),
        ({"fail_at_step": 3}, {}, "set checkpoint_every_steps or workers"),
        ({"checkpoint_every_steps": 0}, {}, "greater than 0"),
    ],
)
def test_step_snapshot_settings_that_cannot_work_are_refused_by_name(tmp_path, train_fields, data_fields, message):
    from modelfoundry.config_flat import ConfigError

    cfg = job(tmp_path, **train_fields)
    cfg["data"].update(data_fields)
    with pytest.raises(ConfigError, match=message):
        parse_config(cfg)
