"""GPU paths (nccl, CUDA, bf16 autocast; Serve num_gpus). Opt in with `pytest -m gpu` on a machine
with CUDA; skipped elsewhere."""

import pytest
import torch

from modelfoundry.config import parse_config
from modelfoundry.store.checkpoint import load_checkpoint
from modelfoundry.training import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_gpu_training_with_nccl_and_bf16_loads_on_cpu(ray_cluster, tmp_path):
    cfg = parse_config(
        {
            "name": "gpu-cnn",
            "model": {"family": "cnn", "preset": "tiny"},
            "data": {"dataset": "digits"},
            "train": {
                "epochs": 3,
                "num_workers": 1,
                "use_gpu": True,
                "lr": 0.01,
                "storage": str(tmp_path / "runs"),
                "model_store": str(tmp_path / "models"),
            },
        }
    )
    outcome = train(cfg)
    assert outcome.metrics["test_accuracy"] > 0.7
    loaded = load_checkpoint(outcome.checkpoint, device="cpu")
    assert next(loaded.model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("scheme", ["weight-only-int8", "bf16"])
def test_gpu_quantization_schemes_load_and_agree_on_cuda(tmp_path, scheme):
    from modelfoundry.compression.quantize import quantize_model
    from modelfoundry.config import DataSection
    from modelfoundry.data import load_splits
    from modelfoundry.models import build_model
    from modelfoundry.store.checkpoint import write_checkpoint
    from test_compress import fit

    splits = load_splits(DataSection(dataset="digits"))
    parent = fit(build_model("mlp", "default", input_shape=(1, 8, 8), output_dim=10), splits, epochs=4)
    state = quantize_model(parent, scheme)
    write_checkpoint(tmp_path / "q", parent, dataset={}, metrics={}, extra={"quantization": {"scheme": scheme}},
                     state=state)  # fmt: skip
    q = load_checkpoint(tmp_path / "q", device="cuda").model
    x = torch.from_numpy(splits.x_test)
    with torch.no_grad():
        same = (q(x.cuda()).argmax(1).cpu() == parent(x).argmax(1)).float().mean().item()
    assert same >= 0.97
    with pytest.raises(Exception, match="runs on the CPU only"):
        write_checkpoint(tmp_path / "d", parent, dataset={}, metrics={},
                         extra={"quantization": {"scheme": "dynamic-int8"}},
                         state=quantize_model(parent, "dynamic-int8"))  # fmt: skip
        load_checkpoint(tmp_path / "d", device="cuda")


def test_gpu_fsdp_transformer_with_bf16_mixed_precision_resumes_and_generates(ray_cluster, tmp_path):
    """nccl, fully_shard with a bf16 MixedPrecisionPolicy, activation checkpointing, sharded
    checkpoints; the exported model generates on the GPU through the same KV-cache path."""
    from modelfoundry.data.text import CharTokenizer
    from modelfoundry.models.transformer import generate

    job = {
        "name": "gpu-lm",
        "model": {"family": "transformer", "preset": "tiny"},
        "data": {"dataset": "pydocs", "limit": 2000},
        "train": {
            "epochs": 3,
            "num_workers": 1,
            "use_gpu": True,
            "strategy": "fsdp",
            "activation_checkpointing": True,
            "lr": 0.003,
            "optimizer": "adamw",
            "storage": str(tmp_path / "runs"),
            "model_store": str(tmp_path / "models"),
        },
    }
    first = train(parse_config(job))
    assert first.metrics["test_bpc"] < first.metrics["unigram_bpc"]
    job["train"]["epochs"] = 4
    resumed = train(parse_config(job), resume=True, allow_changes={"train.epochs"})
    assert [h["epoch"] for h in load_checkpoint(resumed.last_checkpoint).meta.history] == [1, 2, 3, 4]
    loaded = load_checkpoint(resumed.model["path"], device="cuda")
    tok = CharTokenizer.from_spec(loaded.meta.tokenizer)
    assert len(list(generate(loaded.model, tok.encode("The "), 32))) == 32
