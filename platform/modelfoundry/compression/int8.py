"""The int8 tensor format of quantized checkpoints.

model.pt stays a state_dict of plain tensors loaded with weights_only=True (the
sha256 contract of store/checkpoint.py is unchanged): every quantized weight is stored as an int8 tensor
under its own key plus a float32 per-output-channel scale under "<key>::scale" (symmetric, zero
point 0, range -127..127). It does not pickle torch's quantized tensors or packed parameters
(deprecated, and an LSTM's packed cell parameters are refused by weights_only loading). Loading
builds the float model from model.json, wraps it as the scheme requires, loads the dequantized
weights and converts: the converter's per-channel symmetric observer recovers exactly the stored
int8 values (a weight row's largest magnitude is stored as +-127, so the recomputed scale is the
stored one), i.e. the served model is the measured one. For static-int8 the activation scales and
zero points are stored too (as the buffers of fixed-qparams observers).
"""

from __future__ import annotations

import torch

SCALE_SUFFIX = "::scale"
QMAX = 127


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (int8 values in -127..127, float32 scale per row)."""
    flat = w.detach().float().reshape(w.shape[0], -1)
    scale = (flat.abs().amax(1) / QMAX).clamp_min(torch.finfo(torch.float32).tiny)
    q = torch.round(flat / scale[:, None]).clamp(-QMAX, QMAX).to(torch.int8)
    return q.reshape(w.shape), scale


def pack(state: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    """`state` with the tensors under `keys` stored as int8 + scale."""
    out = {}
    for k, v in state.items():
        if k in keys:
            q, s = quantize_rows(v)
            out[k], out[k + SCALE_SUFFIX] = q, s
        else:
            out[k] = v.detach().cpu()
    return out


def unpack(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 state: every int8 tensor with a scale, dequantized."""
    out = {}
    for k, v in state.items():
        if k.endswith(SCALE_SUFFIX):
            continue
        scale = state.get(k + SCALE_SUFFIX)
        if scale is not None:
            if v.dtype != torch.int8:
                raise ValueError(f"{k} has a scale but is {v.dtype}, not int8")
            v = (v.float().reshape(v.shape[0], -1) * scale[:, None]).reshape(v.shape)
        out[k] = v
    return out
