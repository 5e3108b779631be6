"""`foundry export`: model-store versions as ONNX (run under onnxruntime), safetensors and
TorchScript, checked against PyTorch on inputs the exporter never saw, with their lineage; and
the requests that cannot be met refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_model

from modelfoundry import store
from modelfoundry.cli import main
from modelfoundry.compression.quantize import quantize_model
from modelfoundry.export_formats import export_format, read_export
from modelfoundry.models import build_model
from modelfoundry.store.checkpoint import sha256_file, write_checkpoint
from test_compress import accuracy, digits, fit, publish  # noqa: F401  (digits: the fixture)


def foundry_json(capsys, *argv: str) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cnn(digits, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("export")
    model = fit(build_model("cnn", "tiny", input_shape=(1, 8, 8), output_dim=10), digits, epochs=4)
    publish(model, digits, tmp / "models", "cnn-digits", tmp)
    return model, str(tmp / "models")


def test_a_trained_cnn_in_every_format_agrees_with_pytorch_on_the_held_out_digits(cnn, digits, capsys):  # noqa: F811
    model, models = cnn
    x = torch.from_numpy(digits.x_test)  # 360 images: a batch the exporter never traced
    with torch.no_grad():
        want = model(x).numpy()
    assert accuracy(model, digits) > 0.8
    source = store.resolve(models, "cnn-digits", "latest").uri
    for fmt, run in (
        (
            "onnx",
            lambda p: ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0],
        ),
        ("torchscript", lambda p: torch.jit.load(p)(x).detach().numpy()),
        ("safetensors", lambda p: _safetensors_model(p)(x).detach().numpy()),
    ):
        m = foundry_json(capsys, "export", "cnn-digits:1", "--format", fmt, "--store", models, "--json")
        path = Path(m["path"]) / m["file"]
        assert path.is_file() and sha256_file(path) == m["sha256"]
        assert m["source"] == {
            "name": "cnn-digits",
            "version": 1,
            "path": source,
            "model_sha256": json.loads(Path(source, "model.json").read_text())["sha256"],
            "family": "cnn",
        }
        assert m["parity"]["max_abs_diff"] <= m["parity"]["atol"] == 1e-4
        assert read_export(models, "cnn-digits", 1, fmt) == {k: v for k, v in m.items() if k != "path"}
        got = run(str(path))
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=fmt)
        assert (got.argmax(1) == want.argmax(1)).all(), fmt
    again = foundry_json(capsys, "export", "cnn-digits", "--format", "onnx", "--store", models, "--json")
    assert again["path"] == str(Path(source, "exports", "onnx"))  # replaced in place, nothing left staged
    assert sorted(p.name for p in Path(source, "exports").iterdir()) == ["onnx", "safetensors", "torchscript"]
    assert main(["export", "cnn-digits", "--format", "onnx", "--store", models]) == 0
    out = capsys.readouterr().out
    assert "cnn-digits v1 (cnn) -> onnx" in out and "max |onnxruntime" in out


def _safetensors_model(path: str) -> torch.nn.Module:
    """What a user without modelfoundry's store does: the family and config from the file's metadata."""
    with safe_open(path, framework="pt") as f:
        info = f.metadata()
    model = build_model(info["family"], "default", **json.loads(info["config"]))
    load_model(model, path)
    return model.eval()


FAMILIES = [
    ("mlp", {}),
    ("cnn", {"batch_norm": True}),
    ("rnn", {"cell": "lstm", "bidirectional": True}),
    ("rnn", {"cell": "gru", "num_layers": 2}),
    ("vae", {}),
    ("transformer", {}),
]


@pytest.mark.parametrize("family,kw", FAMILIES, ids=[f"{f}-{'-'.join(map(str, kw.values()))}" for f, kw in FAMILIES])
def test_every_family_exports_to_onnx_with_a_dynamic_batch(family, kw, tmp_path):
    torch.manual_seed(0)
    model = build_model(family, "tiny", **kw).eval()
    write_checkpoint(tmp_path / "ckpt", model, dataset={}, metrics={})
    store.export(str(tmp_path / "ckpt"), str(tmp_path / "models"), family)
    m = export_format(str(tmp_path / "models"), family, 1, "onnx")
    session = ort.InferenceSession(str(Path(m["path"], m["file"])), providers=["CPUExecutionProvider"])
    shape = m["input"]["shape"]
    g = torch.Generator().manual_seed(7)
    if m["input"]["dtype"] == "int64":  # a language model: the sequence length is dynamic too
        vocab = model.config.vocab_size
        inputs = [torch.randint(0, vocab, (b, t), generator=g) for b, t in ((3, 1), (1, shape[0]), (7, 5))]
    else:
        inputs = [torch.randn(b, *shape, generator=g) for b in (1, 3, 64)]
    for x in inputs:
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], want, atol=1e-4)


def test_requests_that_cannot_be_met_are_refused_with_the_reason(cnn, digits, tmp_path, capsys):  # noqa: F811
    model, models = cnn
    state = quantize_model(model, "dynamic-int8")
    write_checkpoint(tmp_path / "q", model, dataset={}, metrics={}, extra={"quantization": {"scheme": "dynamic-int8"},
                     "compression": {"parent": {"name": "cnn-digits", "version": 1}}}, state=state)  # fmt: skip
    store.export(str(tmp_path / "q"), models, "cnn-digits-int8")
    for argv, message in (
        (["cnn-digits-int8", "--format", "onnx"], "is quantized (dynamic-int8)"),
        (["cnn-digits-int8", "--format", "onnx"], "export its float parent instead (cnn-digits)"),
        (["no-such-model", "--format", "onnx"], "model 'no-such-model' is not in the store"),
        (["cnn-digits:9", "--format", "onnx"], "has no version 9"),
        (["cnn-digits:one", "--format", "torchscript"], "must be an integer, 'latest' or @ALIAS"),
        (["../escape", "--format", "onnx"], "model name '../escape' must be"),
    ):
        assert main(["export", *argv, "--store", models]) == 2, argv
        assert message in capsys.readouterr().err, argv
    with pytest.raises(SystemExit) as exit_:
        main(["export", "cnn-digits", "--format", "tflite", "--store", models])
    assert exit_.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="format 'tflite' is not one of"):
        export_format(models, "cnn-digits", 1, "tflite")
    with pytest.raises(ValueError, match="has no onnx export; run foundry export"):
        read_export(models, "cnn-digits-int8", 1, "onnx")
    assert not Path(store.resolve(models, "cnn-digits-int8", 1).uri, "exports").exists()  # nothing written


def test_a_uri_store_gets_its_export_beside_the_version(cnn, tmp_path):
    model, _ = cnn
    write_checkpoint(tmp_path / "ckpt", model, dataset={}, metrics={})
    uri = f"file://{tmp_path / 'remote'}"
    store.export(str(tmp_path / "ckpt"), uri, "cnn-digits")
    m = export_format(uri, "cnn-digits", "latest", "safetensors")
    assert m["path"] == f"{uri}/cnn-digits/1/exports/safetensors"
    local = tmp_path / "remote" / "cnn-digits" / "1" / "exports" / "safetensors"
    assert sha256_file(local / "model.safetensors") == m["sha256"]
    assert read_export(uri, "cnn-digits", 1, "safetensors")["sha256"] == m["sha256"]
