"""Post-training quantization, and the quantized checkpoint format.

Schemes (model.json "quantization": {"scheme": ..., ...}):
  dynamic-int8      int8 weights of every Linear / LSTM / GRU; activations quantized per batch at
                    run time (CPU: x86/fbgemm kernels)
  static-int8       the CNN: int8 weights and int8 activations with scales calibrated on a training
                    subset; each stage quantizes its input and dequantizes its output, so a stage
                    still takes and returns float32 (split serving is unchanged)
  weight-only-int8  int8 weights, dequantized to the activation dtype inside the matmul (any device:
                    the GPU path, where it halves weight memory traffic against bf16)
  bf16              weights and compute in bfloat16 (the GPU path; runs, slowly, on a CPU)

The file format: compression/int8.py.

Runtime: PyTorch 2.13's only int8 CPU kernels that run without torch.compile are the eager-mode
modules of torch.ao.quantization (fbgemm/x86 engine); torch marks that namespace deprecated in
favour of torchao, whose CPU int8 path goes through pt2e export and Inductor (a C++ compile in
every replica at load time). The format above holds no torch.ao objects, so moving the runtime to
torchao later changes this module only (docs/architecture.md).
"""

from __future__ import annotations

import copy
import typing
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from modelfoundry.compression.int8 import QMAX, pack, quantize_rows, unpack

Scheme = Literal["dynamic-int8", "static-int8", "weight-only-int8", "bf16"]
SCHEMES: tuple[str, ...] = typing.get_args(Scheme)
CPU_ONLY = ("dynamic-int8", "static-int8")


def _ao():
    with warnings.catch_warnings():  # the namespace warns on import that it is deprecated (see above)
        warnings.simplefilter("ignore")
        import torch.ao.quantization as aq
    return aq


def _quiet(fn: Callable[[], Any]) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return fn()


def _weight_observer():
    aq = _ao()
    return aq.PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-QMAX, quant_max=QMAX
    )


def check_scheme(scheme: str, family: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; choose one of {list(SCHEMES)}")
    if scheme == "static-int8" and family != "cnn":
        raise ValueError(
            f"static-int8 calibrates convolution activations and applies to family cnn; {family} models take "
            "dynamic-int8 (CPU) or weight-only-int8 / bf16 (GPU)"
        )


# ---- building the runtime model of each scheme ----------------------------------------------


class Staged(nn.Module):
    """A model as its stages run in order: what wraps a family model whose stages need something
    around each of them (quantize/dequantize, a dtype cast). stages() keeps the split contract."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x

    def stages(self) -> list[nn.Module]:
        return list(self.parts)


class Cast(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype)


class WeightOnlyInt8Linear(nn.Module):
    """A Linear whose weight is held as int8 + per-row scale and dequantized into the activation's
    dtype in the forward pass (weight memory and traffic /4 against fp32, /2 against bf16)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        q, s = quantize_rows(linear.weight)
        self.register_buffer("weight", q)
        self.register_buffer("weight_scale", s)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_scale.to(x.dtype)[:, None]
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


def _swap_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, WeightOnlyInt8Linear(child))
        else:
            _swap_linears(child)


def _dynamic_keys(model: nn.Module) -> list[str]:
    keys = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            keys.append(f"{name}.weight")
        elif isinstance(mod, (nn.LSTM, nn.GRU)):
            keys += [f"{name}.{p}" for p, _ in mod.named_parameters() if p.startswith("weight_")]
    return keys


def _dynamic_convert(model: nn.Module) -> nn.Module:
    aq = _ao()
    qconfig = aq.QConfig(
        activation=aq.PlaceholderObserver.with_args(dtype=torch.quint8, is_dynamic=True), weight=_weight_observer()
    )
    return _quiet(
        lambda: aq.quantize_dynamic(model, {nn.Linear: qconfig, nn.LSTM: qconfig, nn.GRU: qconfig}, inplace=True)
    )


def _static_cnn(model: nn.Module, activation_observer) -> nn.Module:
    """The CNN's stages, each as quantize -> fused int8 layers -> dequantize (input
    standardisation stays float), prepared with `activation_observer` for the activations."""
    aq = _ao()
    stages = model.stages()
    parts = []
    for i, stage in enumerate(stages):
        layers = list(stage.children()) if isinstance(stage, nn.Sequential) else [stage]
        prefix = []
        if i == 0:  # Sequential(input_norm, block0): the norm runs in float before quantizing
            prefix, layers = [layers[0]], list(layers[1].children())
        body = nn.Sequential(*layers)
        _fuse(body)
        parts.append(nn.Sequential(*prefix, aq.QuantStub(), body, aq.DeQuantStub()))
    staged = Staged(parts).eval()
    qconfig = aq.QConfig(activation=activation_observer, weight=_weight_observer())
    for part in staged.parts:
        for child in part.children():
            if not isinstance(child, type(model.input_norm)):
                child.qconfig = qconfig
    return _quiet(lambda: aq.prepare(staged, inplace=True))


def _fuse(body: nn.Sequential) -> None:
    """Fuse Conv[-BN]-ReLU and Linear-ReLU runs of a Sequential in place."""
    aq = _ao()
    names = [n for n, _ in body.named_children()]
    mods = [m for _, m in body.named_children()]
    groups, i = [], 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            group = [names[i]]
            j = i + 1
            if isinstance(m, nn.Conv2d) and j < len(mods) and isinstance(mods[j], nn.BatchNorm2d):
                group.append(names[j])
                j += 1
            if j < len(mods) and isinstance(mods[j], nn.ReLU):
                group.append(names[j])
                j += 1
            if len(group) > 1:
                groups.append(group)
            i = j
        else:
            i += 1
    if groups:
        aq.fuse_modules(body, groups, inplace=True)


def _fixed_observer():
    aq = _ao()
    return aq.FixedQParamsObserver.with_args(scale=1.0, zero_point=0, dtype=torch.quint8, quant_min=0, quant_max=255)


def _static_keys(prepared: nn.Module) -> list[str]:
    return [
        f"{name}.weight"
        for name, mod in prepared.named_modules()
        if isinstance(mod, (nn.Conv2d, nn.Linear)) and not name.endswith("activation_post_process")
    ]


def quantize_model(model: nn.Module, scheme: str, calibration: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The quantized checkpoint's state_dict for fp32 `model` (eval mode, on the CPU; not changed)."""
    model = model.eval()
    if scheme == "dynamic-int8":
        state = model.state_dict()
        return pack(state, _dynamic_keys(model))
    if scheme == "static-int8":
        if calibration is None:
            raise ValueError("static-int8 needs calibration inputs")
        aq = _ao()
        observed = _static_cnn(copy.deepcopy(model), aq.HistogramObserver.with_args(reduce_range=False))
        with torch.no_grad():
            for chunk in calibration.split(256):
                observed(chunk)
        fixed = _static_cnn(copy.deepcopy(model), _fixed_observer())
        state = fixed.state_dict()
        for name, mod in observed.named_modules():
            if name.endswith("activation_post_process") and hasattr(mod, "calculate_qparams"):
                scale, zero_point = mod.calculate_qparams()
                state[f"{name}.scale"] = scale.reshape(1).float()
                state[f"{name}.zero_point"] = zero_point.reshape(1).to(torch.int32)
        return pack(state, _static_keys(fixed))
    if scheme == "weight-only-int8":
        m = copy.deepcopy(model)
        _swap_linears(m)
        return {k: v.detach().cpu() for k, v in m.state_dict().items()}
    if scheme == "bf16":
        return {k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    raise ValueError(f"unknown quantization scheme {scheme!r}; choose one of {list(SCHEMES)}")


def load_quantized(model: nn.Module, scheme: str, state: dict[str, torch.Tensor], device: str = "cpu") -> nn.Module:
    """The runtime model of `scheme`, from the float `model` (structure only) and the file's state."""
    if scheme in CPU_ONLY and torch.device(device).type != "cpu":
        raise ValueError(f"{scheme} runs on the CPU only (torch's int8 kernels); load it with device='cpu'")
    if scheme == "dynamic-int8":
        model.load_state_dict(unpack(state))
        return _dynamic_convert(model.eval())
    if scheme == "static-int8":
        prepared = _static_cnn(model.eval(), _fixed_observer())
        prepared.load_state_dict(unpack(state))
        return _quiet(lambda: _ao().convert(prepared, inplace=True)).eval()
    if scheme == "weight-only-int8":
        _swap_linears(model)
        model.load_state_dict(state)
        return model.to(device).eval()
    if scheme == "bf16":
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        model = model.to(device=device, dtype=torch.bfloat16).eval()
        # float32 in and out of every stage, so a bf16 stage composes with others in a split
        return Staged([nn.Sequential(Cast(torch.bfloat16), s, Cast(torch.float32)) for s in model.stages()]).eval()
    raise ValueError(f"unknown quantization scheme {scheme!r}; choose one of {list(SCHEMES)}")
