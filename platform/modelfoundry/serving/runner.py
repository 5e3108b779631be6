"""A loaded model (or one group of its stages) ready to run on numpy inputs. Serve-agnostic, so
the same code runs in a Serve replica, in the hand-written FastAPI baseline and in tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from modelfoundry.artifacts import load_checkpoint
from modelfoundry.models.stages import group_module
from modelfoundry.models.transformer import Cache, run_group


class ModelRunner:
    def __init__(self, path: str, group: Sequence[int] | None = None, device: str = "auto") -> None:
        loaded = load_checkpoint(path, device=device)  # sha256-checked, weights_only=True
        self.meta: dict[str, Any] = loaded.meta
        self.model = loaded.model
        self.device = torch.device(loaded.device)
        stages = self.model.stages()
        self.group = list(group) if group is not None else list(range(len(stages)))
        self.last = self.group[-1] == len(stages) - 1  # this group ends the model
        self.stage_modules = [stages[i] for i in self.group]
        whole = self.group == list(range(len(stages)))
        self.module = self.model if whole else group_module(self.model, self.group).eval()

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not x.flags.writeable:  # arrays arriving through Ray's object store are read-only
            x = x.copy()
        out = self.module(torch.from_numpy(x).to(self.device))
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def step(self, x: np.ndarray, cache: Cache, start: int) -> np.ndarray:
        """One generation step of a language model's stages over x's positions, appended to
        `cache` (reset first when start is 0). The group that ends the model returns the last
        position's logits only, (batch, vocab); the others every position's hidden state."""
        if start == 0:
            cache.reset()
        out = run_group(self.stage_modules, torch.from_numpy(np.ascontiguousarray(x)).to(self.device), cache)
        return (out[:, -1] if self.last else out).float().cpu().numpy()

    def run_batch(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """Many requests in one forward pass (what @serve.batch hands over); results split back."""
        sizes = [len(x) for x in xs]
        out = self.run(np.concatenate(xs))
        return np.split(out, np.cumsum(sizes)[:-1])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predictions(task: str, output: np.ndarray) -> list[dict[str, Any]] | list[float]:
    """Classifier logits -> class ids with probabilities; regressor outputs -> values."""
    if task == "classification":
        probs = softmax(output)
        return [{"class": int(p.argmax()), "probabilities": [round(float(v), 6) for v in p]} for p in probs]
    return [float(v) for v in output.reshape(len(output), -1)[:, 0]]
