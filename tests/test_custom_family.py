"""Model families from outside the platform (models/external.py): the shipped example, a TCN
(docs/examples/custom_family, importable as tcnzoo.family:SPEC), and one defined by the tests'
conftest (mfx_plain: a family without stages(), also registered as the entry point `wide`).
Both are on PYTHONPATH, as an installed package is, so Ray workers and Serve replicas import them."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from modelfoundry import store
from modelfoundry.config import ConfigError, parse_config
from modelfoundry.models import FamilySpec, build_model, family_of, family_spec
from modelfoundry.models.external import check
from modelfoundry.models.stages import resolve_split, run_stages
from modelfoundry.store.checkpoint import load_checkpoint

TCN = "tcnzoo.family:SPEC"
PORT = 18133
URL = f"http://127.0.0.1:{PORT}"


def _job(tmp_path, name: str, family: str, **train) -> dict:
    return {
        "name": name,
        "model": {"family": family, "preset": "tiny"},
        "data": {"dataset": "digits"},
        "train": {
            "epochs": 3,
            "batch_size": 32,
            "lr": 0.01,
            "num_workers": 2,
            "storage": str(tmp_path / "runs"),
            "model_store": str(tmp_path / "models"),
            **train,
        },
    }


# ---- unit: loading, checking, the stage contract ------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "default"])
def test_the_example_family_loads_by_reference_and_its_stages_compose_to_forward(preset):
    spec = family_spec(TCN)
    assert spec.name == "tcn" and family_spec(TCN) is spec
    torch.manual_seed(0)
    model = build_model(TCN, preset, input_shape=(1, 8, 8), output_dim=10).eval()
    x = torch.rand(5, 1, 8, 8)
    assert torch.allclose(model(x), run_stages(model, x), atol=1e-5)
    assert family_of(model) == TCN  # what a checkpoint records: the reference that loads it again
    cfg = parse_config(_job(Path("/tmp"), "t", TCN))
    assert cfg.model.family == TCN and cfg.model.spec is spec


def test_an_entry_point_name_loads_the_registered_family():
    spec = family_spec("wide")
    assert spec.name == "wide" and spec is family_spec("mfx_plain:SPEC")  # one object, two names
    assert family_of(build_model("wide", "tiny")) == "wide"  # a checkpoint records the name it was built by
    assert parse_config(_job(Path("/tmp"), "w", "wide")).model.family == "wide"


@pytest.mark.parametrize(
    "family,message",
    [
        ("mfx_plain:NOT_A_SPEC", "is a dict, not a modelfoundry FamilySpec"),
        ("mfx_plain:MISSING", "mfx_plain has no attribute 'MISSING'"),
        ("no_such_package.family:SPEC", "module 'no_such_package.family' cannot be imported"),
        ("mfx_plain:SPEC:X", "must be package.module:ATTR"),
        ("resnet", "unknown model family 'resnet'; choose one of ['cnn', 'mlp', 'rnn', 'transformer', 'vae'], the installed ['wide']"),
    ],
)  # fmt: skip
def test_a_bad_family_reference_is_one_config_error_naming_it(family, message, tmp_path):
    with pytest.raises(ConfigError, match="model.family") as err:
        parse_config(_job(tmp_path, "bad", family))
    assert message in str(err.value)


def test_a_family_spec_the_platform_cannot_use_is_refused_with_every_reason():
    from mfx_plain import SPEC, WideConfig
    from pydantic import BaseModel

    class NoOutput(WideConfig.__base__):  # a FamilyConfig without output_dim, which the dataset sets
        input_shape: tuple[int, ...] = (1, 8, 8)

    bad = FamilySpec("bad", SPEC.model, NoOutput, {"default": {"depth": 2}}, inputs=frozenset({"audio"}), verbs=())
    with pytest.raises(ValueError) as err:
        check(bad, "x:BAD")
    text = str(err.value)
    for reason in (
        "lacks the fields the dataset sets: ['output_dim']",
        "preset 'default' sets unknown fields ['depth']",
        "missing ['tiny']",
        "inputs must be a non-empty subset",
        "verbs must be among",
    ):
        assert reason in text, text
    with pytest.raises(ValueError, match="config must be a FamilyConfig subclass"):
        check(FamilySpec("b", SPEC.model, BaseModel, SPEC.presets, inputs=SPEC.inputs), "x:B")


def test_a_family_without_stages_serves_whole_and_refuses_a_split():
    model = build_model("mfx_plain:SPEC", "tiny", input_shape=(1, 8, 8), output_dim=10)
    assert resolve_split(model, None) == [[0]]
    with pytest.raises(ValueError, match="has no stages\\(\\).*serves monolithic only"):
        resolve_split(model, "auto")


# ---- on the cluster: train (DDP, FSDP), tune, compress, export, split and serve ----------------


def test_a_family_from_outside_trains_tunes_compresses_exports_and_serves_split(ray_cluster, tmp_path):
    from ray import serve

    from modelfoundry.compression.config import parse_compress
    from modelfoundry.compression.run import compress, plan
    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.export_formats import export_format
    from modelfoundry.serving.apps import build_app, parse_args
    from modelfoundry.training.trainer import train
    from modelfoundry.tuning import parse_sweep, run_sweep

    models = str(tmp_path / "models")
    ddp = train(parse_config(_job(tmp_path, "tcn-d", TCN)))
    assert ddp.metrics["test_accuracy"] > 0.6, ddp.metrics
    assert load_checkpoint(ddp.model["path"]).meta.family == TCN
    fsdp = train(parse_config(_job(tmp_path, "tcn-f", TCN, strategy="fsdp")))
    assert fsdp.metrics["test_accuracy"] > 0.6 and load_checkpoint(fsdp.model["path"]).meta.strategy == "fsdp"
    sweep = {
        "name": "tcn-sweep",
        "job": _job(tmp_path, "tcn-sweep", TCN, num_workers=1, epochs=2),
        "search": {"model.channels": {"grid": [8, 16]}},
        "tune": {"num_samples": 1, "max_concurrent_trials": 1, "scheduler": "fifo", "cpus_per_worker": 0.9},
    }
    swept = run_sweep(parse_sweep(sweep, "test", tmp_path)).summary()
    assert swept["trials"] == 2 and load_checkpoint(swept["model_store"]["path"]).meta.family == TCN
    small = compress(plan("tcn-d", parse_compress({"method": "quantize", "measure": {"rounds": 1}}), models)).summary()
    assert small["after"]["size_bytes"] < small["before"]["size_bytes"]
    onnx = export_format(models, "tcn-d", "latest", "onnx")
    assert onnx["parity"]["max_abs_diff"] <= onnx["parity"]["atol"]

    x = load_splits(DataSection(dataset="digits")).x_test[:16]
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    try:
        with httpx.Client(base_url=URL, timeout=120) as http:
            answers = {}
            for split in (None, "auto:3"):
                serve.run(
                    build_app(parse_args(dict(model="tcn-d", store=models, split=split))), name="tcn", route_prefix="/"
                )
                r = http.post("/v1/models/tcn-d:predict", json={"instances": x.tolist()})
                assert r.status_code == 200, r.text
                answers[split] = np.array([p["probabilities"] for p in r.json()["predictions"]])
                assert len(http.get("/v1/models/tcn-d").json()["split"]) == (1 if split is None else 3)
            np.testing.assert_allclose(answers[None], answers["auto:3"], atol=1e-5)
    finally:
        serve.shutdown()


def test_a_family_without_stages_trains_and_serves_monolithic_and_refuses_split(ray_cluster, tmp_path):
    from ray import serve

    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.serving.apps import build_app, parse_args
    from modelfoundry.training.trainer import train

    models = str(tmp_path / "models")
    outcome = train(parse_config(_job(tmp_path, "wide-d", "wide", num_workers=1)))
    assert outcome.metrics["test_accuracy"] > 0.8 and store.resolve(models, "wide-d").version == 1
    with pytest.raises(ValueError, match="serves monolithic only"):
        build_app(parse_args(dict(model="wide-d", store=models, split="auto")))
    x = load_splits(DataSection(dataset="digits")).x_test[:8]
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    try:
        serve.run(build_app(parse_args(dict(model="wide-d", store=models))), name="wide", route_prefix="/")
        r = httpx.post(f"{URL}/v1/models/wide-d:predict", json={"instances": x.tolist()}, timeout=120)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 8, r.text
    finally:
        serve.shutdown()
