"""Weight codecs: how model.pt's tensors become a runnable model. "fp32" (the model's own
state_dict; a pruned model or a distilled student is a smaller model of its family, so fp32 too)
lives here; the quantized encodings are registered by compression/ through the entry-point group
`modelfoundry.weight_codecs` (pyproject.toml), so this floor imports nothing above it. A package
of one's own adds a codec the same way (or calls `register` before loading).

An FSDP run's DCP shards are not a codec: they are read only to resume training
(training/sharding.py); what serves is the model.pt gathered beside them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

import torch
from torch import nn

ENTRY_POINT_GROUP = "modelfoundry.weight_codecs"


@dataclass(frozen=True)
class WeightCodec:
    name: str  # model.json's quantization.scheme ("fp32": no quantization)
    # (the float model built from model.json: its structure, the state read from model.pt with
    # weights_only=True, the device) -> the model to run
    load: Callable[[nn.Module, dict[str, torch.Tensor], str], nn.Module]
    cpu_only: bool = False  # its kernels exist on the CPU only


def _load_fp32(model: nn.Module, state: dict[str, torch.Tensor], device: str) -> nn.Module:
    model.load_state_dict(state)
    return model


_CODECS: dict[str, WeightCodec] = {"fp32": WeightCodec("fp32", _load_fp32)}
_loaded_entry_points = False


def register(codec: WeightCodec) -> None:
    _CODECS[codec.name] = codec


def _load_entry_points() -> None:
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        value = ep.load()
        for codec in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(codec, WeightCodec):
                raise TypeError(f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}) is not a WeightCodec")
            _CODECS.setdefault(codec.name, codec)


def codec(name: str) -> WeightCodec:
    if name not in _CODECS:
        _load_entry_points()
    if name not in _CODECS:
        raise ValueError(
            f"model.pt is encoded as {name!r}, which no installed weight codec reads; known: {sorted(_CODECS)} "
            f"(codecs register through the entry-point group {ENTRY_POINT_GROUP!r})"
        )
    return _CODECS[name]
