"""Cut a model into ordered stage groups for split serving.

A split is a list of groups of consecutive stage indices that together cover every stage once,
in order (e.g. [[0], [1, 2]]), or "auto" with k groups balanced by parameter count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def has_stages(model: nn.Module) -> bool:
    return callable(getattr(model, "stages", None))


def model_stages(model: nn.Module) -> list[nn.Module]:
    """The model's stages (its `stages()`); a family without `stages()` is one stage, itself:
    it serves monolithic and cannot be split."""
    return list(model.stages()) if has_stages(model) else [model]


def stage_params(model: nn.Module) -> list[int]:
    return [sum(p.numel() for p in stage.parameters()) for stage in model_stages(model)]


def validate_split(split: Sequence[Sequence[int]], n_stages: int) -> list[list[int]]:
    groups = [list(g) for g in split]
    flat = [i for g in groups for i in g]
    if not groups or any(not g for g in groups) or flat != list(range(n_stages)):
        raise ValueError(
            f"split {groups!r} must list every stage index 0..{n_stages - 1} once, in order, "
            f"in non-empty consecutive groups, e.g. [[0], [1, ..., {n_stages - 1}]]"
        )
    return groups


def auto_split(model: nn.Module, k: int) -> list[list[int]]:
    """k consecutive groups whose parameter counts are as even as possible (minimise the largest)."""
    sizes = stage_params(model)
    n = len(sizes)
    if not 1 <= k <= n:
        raise ValueError(f"auto split into {k} parts needs 1 <= k <= {n} (the model has {n} stages)")
    best: tuple[int, list[list[int]]] | None = None

    def search(start: int, parts_left: int, groups: list[list[int]]) -> None:
        nonlocal best
        if parts_left == 1:
            candidate = [*groups, list(range(start, n))]
            cost = max(sum(sizes[i] for i in g) for g in candidate)
            if best is None or cost < best[0]:
                best = (cost, candidate)
            return
        for end in range(start + 1, n - parts_left + 2):
            search(end, parts_left - 1, [*groups, list(range(start, end))])

    search(0, k, [])
    assert best is not None
    return best[1]


def resolve_split(model: nn.Module, split: str | int | Sequence[Sequence[int]] | None) -> list[list[int]]:
    """None -> one group (monolithic); "auto" -> 2 balanced groups; "auto:k" or k -> k groups."""
    n = len(model_stages(model))
    if split is None:
        return [list(range(n))]
    if not has_stages(model):
        raise ValueError(
            f"{type(model).__name__} has no stages() (its family does not say where it can be cut), so it "
            "serves monolithic only: drop --split / split, or give the family's model a stages() method"
        )
    if isinstance(split, int) and not isinstance(split, bool):
        return auto_split(model, split)
    if isinstance(split, str):
        if split == "auto":
            return auto_split(model, min(2, n))
        if split.startswith("auto:") and split[5:].isdigit():
            return auto_split(model, int(split[5:]))
        raise ValueError(f"split {split!r} must be 'auto', 'auto:K' or a list of stage index groups")
    return validate_split(split, n)


def group_module(model: nn.Module, group: Sequence[int]) -> nn.Module:
    """One nn.Module running the stages in `group`, in order."""
    stages = model_stages(model)
    return nn.Sequential(*(stages[i] for i in group))


@torch.no_grad()
def run_stages(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Compose all stages in order: equals model(x) in eval mode (the split-serving contract)."""
    for stage in model_stages(model):
        x = stage(x)
    return x
