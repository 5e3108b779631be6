"""The model store on a real S3-compatible server (moto's, on 127.0.0.1: tests/s3server.py):
train, tune, compress, export, alias, serve monolithic, split and canary, and roll out, all with
`s3://bucket/models` as the store and the runs on S3 too. Replicas download the checkpoint and
check its sha256 as they do from a local store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pyarrow.fs as pafs
import pytest

from modelfoundry import store
from modelfoundry.config import parse_config

PORT = 18131
URL = f"http://127.0.0.1:{PORT}"
FOUNDRY = str(Path(sys.executable).with_name("foundry"))


def _job(bucket: str, name: str, seed: int) -> dict:
    return {
        "name": name,
        "model": {"family": "mlp", "preset": "tiny"},
        "data": {"dataset": "digits"},
        "train": {
            "epochs": 2,
            "batch_size": 32,
            "lr": 0.01,
            "num_workers": 1,
            "seed": seed,
            "storage": f"s3://{bucket}/runs",
            "model_store": f"s3://{bucket}/models",
        },
    }


def test_an_s3_store_end_to_end_train_tune_compress_alias_serve_split_and_canary(ray_cluster, s3, tmp_path):
    from ray import serve

    from modelfoundry.compression.config import parse_compress
    from modelfoundry.compression.run import compress, plan
    from modelfoundry.data import load_splits
    from modelfoundry.serving.apps import build_app, parse_args
    from modelfoundry.serving.rollout import deploy_canary, set_traffic
    from modelfoundry.training.trainer import train
    from modelfoundry.tuning import parse_sweep, run_sweep

    bucket = s3.bucket()
    models = f"s3://{bucket}/models"
    # two trained versions of one name (champion and challenger), both exported to S3
    first = train(parse_config(_job(bucket, "digits-mlp", 0)))
    second = train(parse_config(_job(bucket, "digits-mlp", 1)))
    assert (first.model["path"], second.model["path"]) == (f"{models}/digits-mlp/1", f"{models}/digits-mlp/2")
    assert first.checkpoint.startswith(f"s3://{bucket}/runs/")
    fs, root = pafs.FileSystem.from_uri(models)
    assert fs.get_file_info(f"{root}/digits-mlp/2/model.pt").size > 0
    # a sweep's best, exported to the same store
    sweep = {
        "name": "s3-sweep",
        "job": _job(bucket, "s3-sweep", 0),
        "search": {"train.lr": {"grid": [0.01, 0.05]}},
        "tune": {"num_samples": 1, "max_concurrent_trials": 1, "scheduler": "fifo", "cpus_per_worker": 0.9},
    }
    swept = run_sweep(parse_sweep(sweep, "test", tmp_path)).summary()
    assert swept["model_store"]["path"] == f"{models}/s3-sweep/1"
    # compress (int8) and export (ONNX beside the version), both reading and writing S3
    small = compress(
        plan("digits-mlp:1", parse_compress({"method": "quantize", "measure": {"rounds": 1}}), models)
    ).summary()
    assert small["path"] == f"{models}/digits-mlp-dynamic-int8/1"
    out = subprocess.run(
        [FOUNDRY, "export", "digits-mlp:2", "--format", "onnx", "--store", models, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["path"] == f"{models}/digits-mlp/2/exports/onnx"
    # aliases, through the CLI as a user would
    for alias, version in (("champion", "1"), ("challenger", "2")):
        r = subprocess.run(
            [FOUNDRY, "models", "alias", "digits-mlp", version, alias, "--store", models],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
    assert store.aliases(models, "digits-mlp") == {"champion": 1, "challenger": 2}

    x = load_splits(parse_config(_job(bucket, "x", 0)).data).x_test[:8].tolist()
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    try:
        with httpx.Client(base_url=URL, timeout=120) as http:
            # monolithic and split from S3: the same answers
            answers = {}
            for split in (None, [[0], [1]]):
                app = build_app(parse_args(dict(model="digits-mlp", version="@champion", store=models, split=split)))
                serve.run(app, name="s3-app", route_prefix="/")
                r = http.post("/v1/models/digits-mlp:predict", json={"instances": x})
                assert r.status_code == 200, r.text
                meta = http.get("/v1/models/digits-mlp").json()
                assert meta["version"] == "1" and meta["split"] == (split or [[0, 1]])
                answers[str(split)] = [p["class"] for p in r.json()["predictions"]]
            assert answers["None"] == answers["[[0], [1]]"]
            serve.delete("s3-app")
            # a canary of the two aliases, then a rollout that moves all traffic to the challenger
            deploy_canary(
                parse_args(dict(model="digits-mlp", store=models, traffic={"champion": 100, "challenger": 0})),
                "s3-canary",
                port=PORT,
            )
            seen = {http.post("/v1/models/digits-mlp:predict", json={"instances": x}).json()["model_version"]}
            assert seen == {"1"}
            set_traffic("s3-canary", {"champion": 0, "challenger": 100})
            versions = [
                http.post("/v1/models/digits-mlp:predict", json={"instances": x}).json()["model_version"]
                for _ in range(5)
            ]
            assert versions == ["2"] * 5
    finally:
        serve.shutdown()


@pytest.mark.slow  # a `foundry` process of its own (torch imported again): the full tier
def test_a_bad_object_store_is_one_clear_error(s3):
    missing = f"s3://{s3.bucket()}/models"
    with pytest.raises(ValueError, match="is not in the store"):
        store.resolve(missing, "nothing-here")
    r = subprocess.run(
        [FOUNDRY, "serve", "nothing-here", "--store", missing], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2 and "is not in the store" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_step_snapshots_write_and_load_on_s3(s3):
    """A run on s3:// storage: the step snapshot goes to the bucket (a temporary object, then the
    move) and loads back with weights_only, the newer one replacing the older."""
    import torch

    from modelfoundry.training.snapshots import Snapshots, load_snapshot

    run = f"s3://{s3.bucket()}/runs/job/run-1"
    assert load_snapshot(run) is None  # none written yet
    snaps = Snapshots(run, every=1, rank=0, recoveries=[])
    snaps.first_step(attempt=0, epoch=1, step=1)
    for step in (1, 2):
        assert snaps.due()
        snaps.save({"epoch": 1, "step": step, "attempt": 0, "model": {"w": torch.full((2,), float(step))}})
    snaps.close()
    snap = load_snapshot(run)
    assert snap["step"] == 2 and torch.equal(snap["model"]["w"], torch.full((2,), 2.0))
    assert [r["resumed_at"] for r in snap["recoveries"]] == [[1, 0]]
