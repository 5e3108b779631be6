"""A config as flat data: dotted keys (overrides, tracking params, --resume's comparison) and its
digest (lineage, --resume)."""

from __future__ import annotations

import copy
import re
from typing import Any


class ConfigError(ValueError):
    """A user mistake in a config: the message names the field and what is allowed."""


UNSET: Any = object()  # an override that removes a field (--workers 1-2 replaces train.num_workers)


def flatten(d: dict[str, Any], prefix: str = "", keep: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A nested config as dotted keys ({"train": {"lr": 1}} -> {"train.lr": 1}); dicts under a key
    in `keep` stay whole."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in keep:
            out.update(flatten(v, f"{prefix}{k}.", keep))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_sha256(d: dict[str, Any]) -> str:
    """The hash of a config dict (keys sorted): what --resume compares and lineage records."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `data` with each dotted path set, e.g. "model.dropout" or "train.lr" (UNSET: removed)."""
    out = copy.deepcopy(data) if isinstance(data, dict) else data
    for dotted, value in overrides.items():
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", dotted):
            raise ConfigError(f"override path {dotted!r} must be dotted, like train.lr or model.dropout")
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override path {dotted!r}: {key} is not a section")
        node[leaf] = value
        if value is UNSET:
            del node[leaf]
    return out
