"""One step of continuous batching over a group of a language model's stages (all of them in a
monolithic app, one stage service's in a split one): sequences leave, every running sequence
gets one position, new sequences run their prompt alone and join. `StepMessage` is what travels
between stage services (numpy, a typed object: Ray serializes its arrays out of band)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from modelfoundry.models.kv_cache import BatchCache, Cache
from modelfoundry.models.transformer import run_group


@dataclass(frozen=True)
class Prefill:
    key: str  # the sequence
    x: np.ndarray  # its positions: (1, t) token ids into the first group, (1, t, d) hidden after
    reserve: int  # the most positions the sequence will hold


@dataclass(frozen=True)
class StepMessage:
    """A step's input to a group of stages, and (the same shape) its output to the next."""

    batch: str  # the micro-batch: which BatchCache (a stage service routes on it)
    drop: tuple[str, ...]  # sequences that leave before the step
    keys: tuple[str, ...]  # the running rows, in the cache's order after the drops
    x: np.ndarray | None  # their one position each: (rows, 1) ids or (rows, 1, d) hidden; None: no rows
    prefill: tuple[Prefill, ...] = ()


@torch.inference_mode()
def run_step(modules: list[nn.Module], batch: BatchCache, msg: StepMessage, last: bool, device) -> StepMessage | None:
    """The step on this group: the running rows advance one position together, then the joining
    prompts run together (right-padded) and join. None when `batch` does not hold exactly msg.keys
    after the drops (a replica that lost or never had the micro-batch: the caller re-feeds every
    sequence). The last group answers each row's next-token logits, (rows, vocab) and (vocab,) per
    prefill."""
    batch.drop({*msg.drop, *(p.key for p in msg.prefill)})
    if tuple(batch.keys) != msg.keys:
        return None
    x = None
    if msg.keys:
        out = run_group(modules, torch.from_numpy(np.ascontiguousarray(msg.x)).to(device), batch)
        x = _host(out[:, -1] if last else out)
    prefill = []
    if msg.prefill:  # the joining prompts in one forward pass, right-padded
        lengths = [p.x.shape[1] for p in msg.prefill]
        fed = Cache()
        out = run_group(modules, torch.from_numpy(_padded([p.x for p in msg.prefill], max(lengths))).to(device), fed)
        batch.insert([p.key for p in msg.prefill], fed, lengths, [p.reserve for p in msg.prefill])
        for i, (p, n) in enumerate(zip(msg.prefill, lengths)):
            prefill.append(replace(p, x=_host(out[i, n - 1] if last else out[i : i + 1, :n])))
    return replace(msg, x=x, prefill=tuple(prefill))


def _padded(xs: list[np.ndarray], t: int) -> np.ndarray:
    """(1, t_i, ...) arrays as one (n, t, ...) array, zeros after each."""
    out = np.zeros((len(xs), t, *xs[0].shape[2:]), dtype=xs[0].dtype)
    for i, x in enumerate(xs):
        out[i, : x.shape[1]] = x[0]
    return out


def _host(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy()
