"""GPU paths (nccl, CUDA, bf16 autocast; Serve num_gpus). Opt in with `pytest -m gpu` on a machine
with CUDA; skipped elsewhere."""

import pytest
import torch

from modelfoundry.artifacts import load_checkpoint
from modelfoundry.config import parse_config
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
