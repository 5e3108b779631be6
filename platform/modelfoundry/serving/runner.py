"""A loaded model (or one group of its stages) ready to run on numpy inputs. Serve-agnostic, so
the same code runs in a Serve replica, in the hand-written FastAPI baseline and in tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from modelfoundry.models.stages import group_module, model_stages
from modelfoundry.store.checkpoint import load_checkpoint

# Model work expected to take less than this runs on the replica's event loop, the rest in a
# thread. Handing a call to a thread and back costs ~0.2 ms on a quiet 2-core machine and more in
# a busy replica, as much as a small model's whole forward pass; long work still goes to a thread,
# so the loop keeps answering health checks and reporting load (a saturated replica that ran a
# heavy model on its loop reported no load and never scaled up). Not "inline when the replica is
# otherwise idle": tried, and under load a loop busy with one inline request never starts the
# next, so every request looked alone, ran inline, and the autoscaling test saw no scale-up.
INLINE_BELOW_S = 0.001


class ModelRunner:
    def __init__(self, path: str, group: Sequence[int] | None = None, device: str = "auto") -> None:
        loaded = load_checkpoint(path, device=device)  # sha256-checked, weights_only=True
        self.meta = loaded.meta
        self.model = loaded.model
        self.device = torch.device(loaded.device)
        stages = model_stages(self.model)
        self.group = list(group) if group is not None else list(range(len(stages)))
        self.last = self.group[-1] == len(stages) - 1  # this group ends the model
        self.stage_modules = [stages[i] for i in self.group]
        whole = self.group == list(range(len(stages)))
        self.module = self.model if whole else group_module(self.model, self.group).eval()
        self.instance_s: float | None = None  # measured seconds per instance (moving average)

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not x.flags.writeable:  # arrays arriving through Ray's object store are read-only
            x = x.copy()
        out = self.module(torch.from_numpy(x).to(self.device)).float().cpu().numpy()
        per = (time.perf_counter() - t0) / max(1, len(x))
        self.instance_s = per if self.instance_s is None else 0.8 * self.instance_s + 0.2 * per
        return out

    def inline(self, n: int) -> bool:
        """Whether running n instances is expected to take less than INLINE_BELOW_S (never before
        a first measurement). The per-instance figure includes the call's fixed cost, so larger
        requests are over-estimated: they err towards the thread."""
        return self.instance_s is not None and self.instance_s * n < INLINE_BELOW_S

    def run_batch(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        """Many requests in one forward pass (what the batcher hands over); results split back."""
        sizes = [len(x) for x in xs]
        out = self.run(np.concatenate(xs))
        return np.split(out, np.cumsum(sizes)[:-1])


async def run_model(runner: ModelRunner, x: np.ndarray) -> np.ndarray:
    """The model on x: on the event loop when that is cheaper than a thread handoff, else in a
    thread (INLINE_BELOW_S)."""
    return runner.run(x) if runner.inline(len(x)) else await asyncio.to_thread(runner.run, x)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predictions(kind: str, output: np.ndarray) -> list[dict[str, Any]] | list[float]:
    """What a predict verb answers (`kind`, tasks.TaskSpec.output): classifier logits -> class ids
    with probabilities; regressor outputs -> values."""
    if kind == "classes":
        probs = softmax(output)
        return [{"class": int(p.argmax()), "probabilities": [round(float(v), 6) for v in p]} for p in probs]
    return [float(v) for v in output.reshape(len(output), -1)[:, 0]]
