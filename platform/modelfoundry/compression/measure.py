"""What a compression is judged by: size on disk, parameters, latency, the test metric, and how
often the compressed model agrees with its parent."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from modelfoundry.models import build_model
from modelfoundry.storage import filesystem, join
from modelfoundry.store.checkpoint import MODEL_FILE, CheckpointMeta
from modelfoundry.tasks import batch_loss, summarize, task_spec


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def size_bytes(checkpoint: str | Path) -> int:
    """Bytes of a checkpoint's model.pt, in a directory or under a URI (nothing downloaded)."""
    fs, path = filesystem(join(str(checkpoint), MODEL_FILE))
    return fs.get_file_info(path).size


def parameters(meta: CheckpointMeta) -> int:
    """Parameters of the float model a checkpoint's model.json describes (a quantized model has
    its parent's count: quantization changes their width, not their number)."""
    return sum(p.numel() for p in build_model(meta.family, "default", **meta.config).parameters())


@torch.inference_mode()
def latencies_ms(
    models: dict[str, nn.Module], input_shape: tuple[int, ...], batch: int, rounds: int, calls: int = 10
) -> dict[str, float]:
    """p50 latency per forward pass of each model at `batch`, in one thread, same process, the
    models measured in alternating rounds (each round: `calls` calls of each model in turn), so
    drift in the machine's load falls on all of them alike."""
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    samples: dict[str, list[float]] = {k: [] for k in models}
    with torch_threads(1):
        for m in models.values():  # warm up: first calls allocate and pack
            for _ in range(3):
                m(x)
        for _ in range(rounds):
            for name, m in models.items():
                for _ in range(calls):
                    t0 = time.perf_counter()
                    m(x)
                    samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in samples.items()}


@torch.inference_mode()
def evaluate(model: nn.Module, task: str, x: np.ndarray, y: np.ndarray, y_std: float) -> dict[str, float]:
    """The test metrics of the training loop (same loss and sums), on the CPU."""
    sums: dict[str, float] = {}
    for i in range(0, len(x), 512):
        _, part = batch_loss(task, model, torch.from_numpy(x[i : i + 512]), torch.from_numpy(y[i : i + 512]), y_std)
        for k, v in part.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return summarize(task, sums, "test")


@torch.inference_mode()
def agreement(a: nn.Module, b: nn.Module, task: str, x: np.ndarray) -> float | None:
    """Classifiers: the share of inputs where both predict the same class."""
    if not task_spec(task).classifies:
        return None
    same = 0
    for i in range(0, len(x), 512):
        xb = torch.from_numpy(x[i : i + 512])
        same += int((a(xb).argmax(1) == b(xb).argmax(1)).sum())
    return same / len(x)


def profile(
    models: dict[str, nn.Module],
    sizes: dict[str, int],
    params: dict[str, int],
    task: str,
    splits,
    rounds: int,
    batch_sizes: tuple[int, ...] = (1, 64),
) -> dict[str, dict[str, Any]]:
    """Every measure for each model: {name: {size_bytes, parameters, p50_ms_b1, ..., test_*}}."""
    shape = tuple(splits.spec.input_shape)
    y_std = float(splits.stats()["y_std"])
    out: dict[str, dict[str, Any]] = {
        k: {"size_bytes": sizes[k], "parameters": params[k], **evaluate(m, task, splits.x_test, splits.y_test, y_std)}
        for k, m in models.items()
    }
    for b in batch_sizes:
        for k, v in latencies_ms(models, shape, b, rounds).items():
            out[k][f"p50_ms_b{b}"] = round(v, 4)
    return out
