"""Compression on real models and real files: structured pruning that really shrinks, int8 / bf16
checkpoints that load with weights_only and agree with their parent, distillation on Ray Train
(surviving a killed worker), the multi-objective sweep's front, compressed models served over
HTTP (an int8 stage beside a float one), and the mistakes refused before any work."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from cluster_procs import foundry_cmd, kill_a_train_worker_when
from modelfoundry import store
from modelfoundry.compression.config import parse_compress
from modelfoundry.compression.prune import keep_count, parameter_count, prune
from modelfoundry.compression.quantize import quantize_model
from modelfoundry.compression.run import compress, plan
from modelfoundry.config import ConfigError, DataSection, parse_config
from modelfoundry.data import load_splits
from modelfoundry.models import build_model, set_normalization
from modelfoundry.models.stages import run_stages
from modelfoundry.store.checkpoint import CheckpointError, load_checkpoint, write_checkpoint
from modelfoundry.tasks import batch_loss
from modelfoundry.training import train
from modelfoundry.tuning.pareto import dominates, pareto_front
from test_training import job

DIGITS = DataSection(dataset="digits")


@pytest.fixture(scope="module")
def digits():
    return load_splits(DIGITS)


def fit(model: torch.nn.Module, splits, epochs: int = 6) -> torch.nn.Module:
    """A few epochs of plain training, in this process: a real model to compress, fast."""
    torch.manual_seed(0)
    set_normalization(model, splits.stats())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)
    model.train()
    for _ in range(epochs):
        for i in torch.randperm(len(x)).split(32):
            loss, _ = batch_loss("classification", model, x[i], y[i], 1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def publish(model, splits, store_dir: Path, name: str, tmp: Path) -> str:
    dataset = {**splits.spec.to_dict(), "config": DIGITS.model_dump(mode="json")}
    write_checkpoint(tmp / name, model, dataset=dataset, metrics={}, extra={"task": "classification"})
    return store.export(str(tmp / name), str(store_dir), name)["path"]


def accuracy(model, splits) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(splits.x_test)).argmax(1).numpy() == splits.y_test).mean())


# ---- pruning ---------------------------------------------------------------------------------

PRUNE_CASES = [
    ("mlp", {"input_shape": (1, 8, 8)}, "hidden_sizes"),
    ("cnn", {"input_shape": (1, 8, 8)}, "channels"),
    ("cnn", {"input_shape": (1, 28, 28), "batch_norm": True}, "channels"),
    ("rnn", {"input_shape": (1, 8, 8)}, "hidden_size"),
    ("rnn", {"input_shape": (20, 1), "cell": "gru", "num_layers": 2, "bidirectional": True}, "hidden_size"),
]


@pytest.mark.parametrize("family,kw,width", PRUNE_CASES)
def test_structured_pruning_gives_a_smaller_model_of_the_family(family, kw, width):
    torch.manual_seed(0)
    model = build_model(family, "default", **kw).eval()
    x = torch.randn(8, *kw["input_shape"])
    for ratio in (0.25, 0.5):
        small = prune(model, ratio)
        before, after = getattr(model.config, width), getattr(small.config, width)
        widths = before if isinstance(before, tuple) else (before,)
        assert (after if isinstance(after, tuple) else (after,)) == tuple(keep_count(w, ratio) for w in widths)
        assert parameter_count(small) < (1 - ratio / 2) * parameter_count(model)
        assert small(x).shape == model(x).shape
        torch.testing.assert_close(run_stages(small, x), small(x))  # split serving still composes


def test_pruning_keeps_the_important_units_so_little_is_lost_before_fine_tuning(digits):
    model = fit(build_model("mlp", "default", input_shape=(1, 8, 8), output_dim=10), digits)
    small = prune(model, 0.25)
    assert accuracy(small, digits) > accuracy(model, digits) - 0.05
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        prune(model, 1.0)
    with pytest.raises(ValueError, match="applies to families"):
        prune(build_model("vae", "tiny", input_shape=(1, 8, 8)), 0.5)


# ---- quantization -----------------------------------------------------------------------------

QUANT_CASES = [
    ("mlp", "dynamic-int8", 0.3),
    ("mlp", "weight-only-int8", 0.3),
    ("mlp", "bf16", 0.55),
    ("cnn", "static-int8", 0.35),
    ("rnn", "dynamic-int8", 0.35),
]


@pytest.fixture(scope="module")
def trained(digits):
    return {
        f: fit(build_model(f, "default", input_shape=(1, 8, 8), output_dim=10), digits, epochs=4)
        for f in ("mlp", "cnn", "rnn")
    }


@pytest.mark.parametrize("family,scheme,max_size", QUANT_CASES)
def test_quantized_checkpoints_are_smaller_load_safely_and_agree_with_the_parent(
    family, scheme, max_size, trained, digits, tmp_path
):
    parent = trained[family]
    state = quantize_model(parent, scheme, calibration=torch.from_numpy(digits.x_train[:256]))
    dataset = digits.spec.to_dict()
    write_checkpoint(tmp_path / "fp32", parent, dataset=dataset, metrics={})
    write_checkpoint(tmp_path / "q", parent, dataset=dataset, metrics={}, extra={"quantization": {"scheme": scheme}},
                     state=state)  # fmt: skip
    size = (tmp_path / "q" / "model.pt").stat().st_size / (tmp_path / "fp32" / "model.pt").stat().st_size
    assert size <= max_size, f"{scheme} file is {size:.2f}x the fp32 one"
    loaded = load_checkpoint(tmp_path / "q")  # sha256-checked, torch.load(weights_only=True)
    x = torch.from_numpy(digits.x_test)
    with torch.no_grad():
        same = (loaded.model(x).argmax(1) == parent(x).argmax(1)).float().mean().item()
        assert same >= 0.97, f"{scheme} agrees with its parent on {same:.3f} of the test split"
        again = load_checkpoint(tmp_path / "q").model(x)
        assert torch.equal(again, loaded.model(x))  # the served model is the measured one
        torch.testing.assert_close(run_stages(loaded.model, x), loaded.model(x))


def test_a_tampered_compressed_model_is_refused(trained, digits, tmp_path):
    state = quantize_model(trained["mlp"], "dynamic-int8")
    d = write_checkpoint(tmp_path / "q", trained["mlp"], dataset={}, metrics={},
                         extra={"quantization": {"scheme": "dynamic-int8"}}, state=state)  # fmt: skip
    blob = bytearray((d / "model.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (d / "model.pt").write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="integrity check"):
        load_checkpoint(d)


# ---- mistakes, refused before any work ----------------------------------------------------------


def test_bad_compression_requests_fail_before_any_work_and_write_nothing(trained, digits, tmp_path):
    models = tmp_path / "models"
    publish(trained["mlp"], digits, models, "mlp-p", tmp_path)
    vae = build_model("vae", "tiny", input_shape=(1, 28, 28))
    write_checkpoint(tmp_path / "vae", vae, dataset={"config": {"dataset": "mnist"}}, metrics={},
                     extra={"task": "generative"})  # fmt: skip
    store.export(str(tmp_path / "vae"), str(models), "vae-28")
    listing = sorted(str(p) for p in models.rglob("*"))
    base = {"train": {"model_store": str(models), "storage": str(tmp_path / "runs")}}

    def refused(parent: str, data: dict, match: str) -> None:
        with pytest.raises((ValueError, ConfigError), match=match):
            plan(parent, parse_compress({**base, **data}))

    refused("mlp-p", {"method": "shrink"}, "unknown method 'shrink'")
    for ratio in (0.0, 1.0, 1.5, -0.2):
        refused("mlp-p", {"method": "prune", "prune": {"ratio": ratio}}, "prune.ratio")
    refused("mlp-p", {"method": "prune"}, "needs a prune: section")
    refused("mlp-p", {"method": "quantize", "prune": {"ratio": 0.5}}, "takes no prune")
    refused("mlp-p:7", {"method": "quantize"}, "has no version 7")
    refused("nope", {"method": "quantize"}, "'nope' is not in the store")
    refused("mlp-p", {"method": "quantize", "quantize": {"scheme": "static-int8"}}, "applies to family cnn")
    refused("mlp-p", {"method": "quantize", "quantize": {"scheme": "int3"}}, "quantize.scheme")
    student = {"family": "rnn", "input_shape": [8, 8]}
    refused("mlp-p", {"method": "distill", "distill": {"student": student}}, "set from the dataset")
    # a teacher of flat 64-feature rows (a Parquet table) cannot teach a CNN, which needs images
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {f"f{i}": digits.x_train.reshape(len(digits.x_train), -1)[:, i] for i in range(64)}
    pq.write_table(pa.table({**cols, "label": digits.y_train}), tmp_path / "rows.parquet")
    table = DataSection(dataset="parquet", path=str(tmp_path / "rows.parquet"), feature_columns=list(cols))
    flat = build_model("mlp", "tiny", input_shape=(64,), output_dim=10)
    write_checkpoint(tmp_path / "flat", flat, dataset={"config": table.model_dump(mode="json")}, metrics={},
                     extra={"task": "classification"})  # fmt: skip
    store.export(str(tmp_path / "flat"), str(models), "flat")
    listing = sorted(str(p) for p in models.rglob("*"))
    cnn_student = {"family": "cnn", "preset": "tiny"}
    refused("flat", {"method": "distill", "distill": {"student": cnn_student}}, "cannot take the teacher's input shape")
    transfer = {"student": {"family": "mlp", "preset": "tiny"}, "transfer": {"vae": "vae-28"}}
    refused(
        "mlp-p", {"method": "distill", "distill": transfer}, "shape \\[1, 28, 28\\]; the teacher takes \\[1, 8, 8\\]"
    )
    refused("vae-28", {"method": "distill", "distill": {"student": {"family": "mlp"}}}, "needs a classifier teacher")
    assert sorted(str(p) for p in models.rglob("*")) == listing  # nothing written

    # the CLI: exit 2 with the message, and no Ray cluster started (no connect line)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"method": "prune", "prune": {"ratio": 0.5}, **base}))
    r = subprocess.run(foundry_cmd("compress", "mlp-p:3", "--config", str(cfg)), capture_output=True, text=True)
    assert r.returncode == 2 and "has no version 3" in r.stderr, r.stderr
    assert "ray" not in r.stdout.lower() and sorted(str(p) for p in models.rglob("*")) == listing


def test_a_vae_transfer_set_adds_generated_inputs_labelled_by_the_teacher(trained, digits, tmp_path):
    from modelfoundry.compression.run import with_transfer_set

    models = tmp_path / "models"
    teacher_path = publish(trained["mlp"], digits, models, "t", tmp_path)
    vae = fit_vae(build_model("vae", "tiny", input_shape=(1, 8, 8)), digits)
    vae_path = publish(vae, digits, models, "v", tmp_path)
    out = with_transfer_set(digits, teacher_path, vae_path, 300, seed=1)
    n = len(digits.x_train)
    assert out.x_train.shape == (n + 300, 1, 8, 8) and out.y_train.shape == (n + 300,)
    synth = out.x_train[n:]
    assert synth.min() >= 0.0 and synth.max() <= 1.0  # the images' pixel range
    with torch.no_grad():
        assert np.array_equal(out.y_train[n:], trained["mlp"](torch.from_numpy(synth)).argmax(1).numpy())
    assert len(set(out.y_train[n:].tolist())) >= 3  # the decoder draws varied digits, not one blob
    cfg = parse_compress({"method": "distill", "train": {"model_store": str(models), "storage": str(tmp_path / "r")},
                          "distill": {"student": {"family": "mlp", "preset": "tiny"}, "transfer": {"vae": "v"}}})  # fmt: skip
    assert plan("t", cfg).transfer_path == vae_path


def fit_vae(vae, splits, epochs: int = 15):
    from modelfoundry.models.vae import vae_loss

    torch.manual_seed(0)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    x = torch.from_numpy(splits.x_train)
    vae.train()
    for _ in range(epochs):
        for i in torch.randperm(len(x)).split(64):
            logits, mu, logvar = vae(x[i], return_latent=True)
            recon, kl = vae_loss(logits, x[i], mu, logvar)
            opt.zero_grad()
            (recon + kl).mean().backward()
            opt.step()
    return vae.eval()


@pytest.mark.slow  # a `foundry` process of its own (torch imported again): the full tier
def test_foundry_compress_quantizes_without_a_cluster_and_prints_json_last(trained, digits, tmp_path):
    models = tmp_path / "models"
    publish(trained["mlp"], digits, models, "mlp-q", tmp_path)
    config = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "compress_int8.yaml"
    cmd = foundry_cmd("compress", "mlp-q", "--config", str(config), "--store", str(models), "--json")
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Ray" not in r.stdout  # post-training quantization needs no cluster
    s = json.loads(r.stdout.strip().splitlines()[-1])
    assert (s["name"], s["version"], s["method"]) == ("mlp-q-dynamic-int8", 1, "quantize")
    assert s["ratios"]["size_bytes"] <= 0.3 and s["agreement"] >= 0.97
    assert "[mlp-q-dynamic-int8] quantized to dynamic-int8" in r.stdout  # progress lines
    assert load_checkpoint(s["path"]).meta.codec == "dynamic-int8"


def test_compress_reads_and_writes_a_uri_store(trained, digits, tmp_path):
    models = tmp_path / "models"
    publish(trained["mlp"], digits, models, "mlp-u", tmp_path)
    uri = f"file://{models}"
    train_section = {"model_store": uri, "storage": f"file://{tmp_path}/runs"}
    s = compress(
        plan("mlp-u:1", parse_compress({"method": "quantize", "measure": {"rounds": 1}, "train": train_section}))
    ).summary()
    assert s["path"] == f"{uri}/mlp-u-dynamic-int8/1" and s["ratios"]["size_bytes"] <= 0.3
    meta = load_checkpoint(s["path"]).meta
    assert meta.compression["parent"]["name"] == "mlp-u" and meta.metrics["size_bytes"] == s["after"]["size_bytes"]
    assert [m["name"] for m in store.list_models(uri)] == ["mlp-u", "mlp-u-dynamic-int8"]


def test_pareto_front_holds_exactly_the_non_dominated():
    objs = [("acc", "max"), ("ms", "min")]
    rows = [{"acc": 0.9, "ms": 1.0}, {"acc": 0.95, "ms": 2.0}, {"acc": 0.9, "ms": 1.5}, {"acc": 0.8, "ms": 0.5}]
    front = pareto_front(rows, objs)
    assert front == [rows[0], rows[1], rows[3]]
    assert dominates(rows[0], rows[2], objs) and not dominates(rows[0], rows[1], objs)
    assert not dominates(rows[0], rows[0], objs)


# ---- on a real local Ray cluster ----------------------------------------------------------------


def teacher_job(tmp_path: Path, name: str = "teacher") -> dict:
    cfg = job(tmp_path, name, epochs=6, lr=0.003)  # test_training's digits MLP job
    cfg["model"]["preset"] = "default"
    return cfg


@pytest.fixture(scope="module")
def teacher(ray_cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compress")
    outcome = train(parse_config(teacher_job(tmp)))
    return tmp, outcome


def run_compress(tmp: Path, parent: str, **data) -> dict:
    train_section = {"storage": str(tmp / "runs"), "model_store": str(tmp / "models"), **data.pop("train", {})}
    cfg = parse_compress({"measure": {"rounds": 3}, "train": train_section, **data})
    return compress(plan(parent, cfg)).summary()


def test_each_method_writes_a_store_entry_with_lineage_that_serves_over_http(teacher):
    from ray import serve

    from modelfoundry.serving.apps import build_app

    tmp, outcome = teacher
    parent_meta = json.loads((Path(outcome.model["path"]) / "model.json").read_text())
    fine = {"epochs": 2, "batch_size": 32, "lr": 0.001, "num_workers": 2}
    results = {
        "int8": run_compress(tmp, "teacher", method="quantize"),
        "pruned": run_compress(tmp, "teacher:1", method="prune", prune={"ratio": 0.5}, train=fine),
        "student": run_compress(
            tmp, "teacher", method="distill", distill={"student": {"family": "mlp", "preset": "tiny"}}, train=fine
        ),
    }
    for kind, r in results.items():
        meta = json.loads((Path(r["path"]) / "model.json").read_text())
        lineage = meta["compression"]["parent"]
        assert (lineage["name"], lineage["version"], lineage["sha256"]) == ("teacher", 1, parent_meta["sha256"])
        assert r["after"]["size_bytes"] < r["before"]["size_bytes"], kind
        assert meta["compression"]["before"]["test_accuracy"] == pytest.approx(outcome.metrics["test_accuracy"])
    assert results["int8"]["ratios"]["size_bytes"] <= 0.3
    assert results["int8"]["agreement"] >= 0.97
    assert results["pruned"]["ratios"]["parameters"] <= 0.55
    assert results["student"]["after"]["parameters"] < results["student"]["before"]["parameters"] / 5

    # every compressed entry serves as it is; an int8 stage runs beside the fp32 parent's stage
    x = load_splits(DIGITS).x_test[:32]
    serve.start(http_options={"host": "127.0.0.1", "port": 18124})
    try:
        for args, model in [
            ({"model": "teacher-dynamic-int8"}, results["int8"]["path"]),
            ({"model": "teacher-pruned50", "split": "auto"}, results["pruned"]["path"]),
            ({"model": "teacher-distilled"}, results["student"]["path"]),
            ({"model": "teacher", "split": [[0], [1, 2]], "stage_models": [None, "teacher-dynamic-int8"]}, None),
        ]:
            serve.run(build_app({"store": str(tmp / "models"), **args}), name="c", route_prefix="/")
            r = httpx.post(f"http://127.0.0.1:18124/v1/models/{args['model']}:predict",
                           json={"instances": x.tolist()}, timeout=60)  # fmt: skip
            assert r.status_code == 200, r.text
            got = np.array([p["probabilities"] for p in r.json()["predictions"]])
            if model:
                local = load_checkpoint(model).model
                with torch.no_grad():
                    want = torch.softmax(local(torch.from_numpy(x)), 1).numpy()
            else:  # float stage 0, then the int8 copy's stages 1-2
                fp32, q = load_checkpoint(outcome.model["path"]).model, load_checkpoint(results["int8"]["path"]).model
                with torch.no_grad():
                    h = fp32.stages()[0](torch.from_numpy(x))
                    for s in q.stages()[1:]:
                        h = s(h)
                    want = torch.softmax(h, 1).numpy()
            np.testing.assert_allclose(got, want, atol=1e-5)
        with pytest.raises(ValueError, match="does not have the stage boundaries"):
            build_app({"store": str(tmp / "models"), "model": "teacher", "split": "auto",
                       "stage_models": [None, "teacher-pruned50"]})  # fmt: skip
    finally:
        serve.shutdown()


def test_distillation_on_two_workers_resumes_after_a_worker_is_killed(teacher):
    tmp, _ = teacher
    root = tmp / "runs" / "kd-kill"
    train_section = {"epochs": 8, "batch_size": 32, "lr": 0.003, "num_workers": 2, "max_failures": 2}

    def complete() -> list[Path]:
        return [c for c in sorted(root.glob("run-*/checkpoint_2*")) if (c / "model.json").is_file()]

    with kill_a_train_worker_when(lambda: len(complete()) >= 2) as killed:
        r = run_compress(
            tmp, "teacher", name="kd-kill", method="distill", train=train_section,
            distill={"student": {"family": "mlp", "preset": "tiny"}, "temperature": 3.0},
        )  # fmt: skip
    assert killed, "no worker was found to kill"
    last = complete()[-1]
    hist = [(h["epoch"], h["attempt"]) for h in json.loads((last / "model.json").read_text())["history"]]
    assert [e for e, _ in hist] == list(range(1, 9)), hist  # every epoch once: resumed, not restarted
    assert hist[-1][1] >= 1
    assert r["after"]["test_accuracy"] > 0.8


def test_a_multi_objective_compression_sweep_returns_a_non_dominated_front(teacher):
    from modelfoundry.tuning import parse_sweep, run_sweep

    tmp, _ = teacher
    job = teacher_job(tmp, "pareto")
    job["model"]["preset"] = "tiny"
    job["train"]["epochs"] = 3
    sweep = parse_sweep(
        {
            "name": "pareto",
            "job": job,
            "search": {
                "model.hidden_sizes": {"choice": [[16], [64]]},
                "compress.prune_ratio": {"choice": [0.0, 0.5]},
                "compress.quantize": {"choice": [False, True]},
                "compress.temperature": {"choice": [2.0, 4.0]},  # each trial distils from the teacher
            },
            "compress": {"finetune_epochs": 1, "latency_rounds": 3, "teacher": "teacher"},
            "tune": {"num_samples": 4, "scheduler": "fifo", "searcher": "nsga2", "cpus_per_worker": 1},
        },
        "test",
        tmp,
    )
    outcome = run_sweep(sweep)
    s = outcome.summary()
    assert s["trials"] == 4 and s["front"]
    objs = outcome.details["objectives"]
    assert [n for n, _ in objs] == ["test_accuracy", "p50_ms_b1", "size_bytes"]
    for a in outcome.details["front"]:
        assert not any(dominates(b, a, objs) for b in outcome.trials)
    assert {Path(f).name for f in s["files"]} == {"pareto.csv", "pareto.png"}
    assert all(Path(f).stat().st_size > 0 for f in s["files"])
    assert len(s["model_store"]) == len(s["front"])
    for m in s["model_store"]:
        meta = load_checkpoint(m["path"]).meta
        assert set(meta.model_extra["objectives"]) == {"test_accuracy", "p50_ms_b1", "size_bytes"}
    assert {t["compress.temperature"] for t in outcome.trials} <= {2.0, 4.0}
    with pytest.raises(ConfigError, match="Set tune.scheduler: fifo"):
        parse_sweep({**{"job": job, "search": {"compress.quantize": {"choice": [True]}}}, "tune": {}}, "t", tmp)
    missing = {"job": job, "search": {"compress.quantize": {"choice": [True]}}, "compress": {"teacher": "nope"}}
    with pytest.raises(ValueError, match="'nope' is not in the store"):  # before any trial runs
        run_sweep(parse_sweep({**missing, "tune": {"scheduler": "fifo"}}, "t", tmp))
    with pytest.raises(ConfigError, match="prune_ratio"):
        parse_sweep(
            {"job": job, "search": {"compress.prune_ratio": {"choice": [1.5]}}, "tune": {"scheduler": "fifo"}}, "t", tmp
        )


def test_a_language_model_is_refused_by_name_before_any_work(tmp_path):
    lm = build_model("transformer", "tiny", vocab_size=12)
    write_checkpoint(tmp_path / "lm", lm, dataset={}, metrics={}, extra={"task": "language-model"})
    store.export(str(tmp_path / "lm"), str(tmp_path / "models"), "lm")
    cfg = parse_compress({"method": "quantize", "train": {"model_store": str(tmp_path / "models")}})
    with pytest.raises(ValueError, match="lm is a model of task 'language-model'"):
        plan("lm", cfg)
