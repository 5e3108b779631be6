"""The `:explain` verb: Integrated Gradients (Captum) for classifiers and regressors, on a model in
this replica or across split stage services.

A request is `{"instances": [...], "target": T | [T, ...], "baseline": number | instance,
"steps": N}`; the reply `{"explanations": [{"target": T, "attributions": <instance-shaped>,
"delta": D}, ...]}`, D being Captum's convergence delta (sum of attributions minus
f(input) - f(baseline) for the target). The target defaults to the predicted class (a
classifier) or output 0 (a regressor); the baseline to zeros. Cost: IG runs steps x instances
rows forward and backward, bounded by the app's max_instances like a predict's rows.

Split apps: the whole model never comes to one place. Each stage service answers a
vector-Jacobian product for the batch it computed forward (Stage.vjp); the chain of stages is one
differentiable function here (RemoteStage), so Captum's IG is the same code on both shapes and a
split app's attributions equal the monolithic app's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modelfoundry.serving.requests import RequestError, instances_array

# Gauss-Legendre points on the path (Captum's default method). ReLU kinks make the integrand
# discontinuous: at 100 the attributions of 95% of digits instances add up to f(x) - f(baseline)
# within 1% for the MLP and the CNN (at Captum's default 50, the CNN's 95th percentile is 1.9%);
# the LSTM's smooth path is exact to 1e-6 (docs/results.md). `delta` tells the client how close.
DEFAULT_STEPS = 100
MAX_STEPS = 1024


@dataclass(frozen=True)
class ExplainRequest:
    x: np.ndarray  # (n, *input_shape) float32
    targets: list[int] | None  # None: the predicted class / output 0
    baseline: np.ndarray  # (n, *input_shape)
    steps: int


def parse_explain(data: dict[str, Any], input_shape: tuple[int, ...], max_rows: int) -> ExplainRequest:
    """A validated explain request; every mistake a 400 (413 beyond the row budget) naming it."""
    unknown = sorted(set(data) - {"instances", "target", "baseline", "steps"})
    if unknown:
        raise RequestError(400, f"unknown field(s) {unknown}; :explain takes instances, target, baseline, steps")
    steps = data.get("steps", DEFAULT_STEPS)
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
        raise RequestError(400, f"steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
    items = data.get("instances")
    if isinstance(items, list) and len(items) * steps > max_rows:
        raise RequestError(
            413,
            f"{len(items)} instances x {steps} steps is {len(items) * steps} rows to run; the limit is {max_rows} "
            "(the app's max_instances): send fewer instances or steps",
        )
    x = instances_array(data, input_shape, max_rows)
    return ExplainRequest(x, _targets(data.get("target"), len(x)), _baseline(data.get("baseline", 0.0), x), steps)


def _targets(target: Any, n: int) -> list[int] | None:
    if target is None:
        return None
    items = target if isinstance(target, list) else [target] * n
    if len(items) != n or not all(isinstance(t, int) and not isinstance(t, bool) for t in items):
        raise RequestError(400, f"target must be an integer or a list of {n} integers (one per instance)")
    return list(items)


def _baseline(baseline: Any, x: np.ndarray) -> np.ndarray:
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        b = np.full_like(x, float(baseline))
    elif isinstance(baseline, list):  # one instance, checked as instances are
        try:
            one = instances_array({"baseline": [baseline]}, x.shape[1:], 1, key="baseline")[0]
        except RequestError as err:
            raise RequestError(400, f"baseline: {err.message}") from None
        b = np.broadcast_to(one, x.shape).copy()
    else:
        raise RequestError(400, f"baseline must be a number or one instance of shape {list(x.shape[1:])}")
    if not np.isfinite(b).all():
        raise RequestError(400, "baseline holds NaN or infinite values")
    return b.astype(np.float32)


def _overflow() -> RequestError:
    return RequestError(
        400,
        "the model's output or its gradient overflows (inf or NaN) on the path from the baseline to these "
        "inputs: their values are far outside the range it was trained on; check the input's scale",
    )


def check_targets(targets: list[int], outputs: int) -> None:
    bad = [t for t in targets if not 0 <= t < outputs]
    if bad:
        raise RequestError(400, f"target {bad[0]} is out of range: the model has {outputs} outputs (0..{outputs - 1})")


def integrated_gradients(
    forward: Callable[[torch.Tensor], torch.Tensor], req: ExplainRequest, classes: bool
) -> dict[str, list[dict[str, Any]]]:
    """Captum's IntegratedGradients over `forward` (a module, or the stage chain); blocking."""
    from captum.attr import IntegratedGradients

    def flat(t: torch.Tensor) -> torch.Tensor:  # (n, k) whatever the model's output shape: targets index k
        out = forward(t)
        return out.reshape(len(out), -1)

    x, b = torch.from_numpy(req.x), torch.from_numpy(req.baseline)
    n = len(x)
    # f(input) and f(baseline) in one forward pass: the default targets and the convergence delta
    # (Captum's own delta would run two more forward passes: through a split app, two more hops)
    with torch.no_grad():
        ends = flat(torch.cat([x, b]))
    if not torch.isfinite(ends).all():
        raise _overflow()
    out, base = ends[:n], ends[n:]
    targets = req.targets
    if targets is None:
        targets = out.argmax(1).tolist() if classes else [0] * n
    check_targets(targets, out.shape[1])
    attributions = IntegratedGradients(flat).attribute(x, baselines=b, target=targets, n_steps=req.steps)
    rows = torch.arange(n)
    gap = (out[rows, targets] - base[rows, targets]).double()
    delta = attributions.detach().reshape(n, -1).double().sum(1) - gap  # Captum's convergence delta
    if not (torch.isfinite(attributions).all() and torch.isfinite(delta).all()):
        raise _overflow()
    return {
        "explanations": [
            {"target": t, "attributions": a.tolist(), "delta": float(d)}
            for t, a, d in zip(targets, attributions.detach().numpy(), delta.numpy())
        ]
    }


def vjp(module: torch.nn.Module, x: np.ndarray, grad_out: np.ndarray, device: torch.device) -> np.ndarray:
    """The vector-Jacobian product of `module` at x: grad_out^T d module(x) / dx."""
    xt = torch.tensor(np.asarray(x, dtype=np.float32), device=device, requires_grad=True)
    # cuDNN runs an RNN's backward in training mode only; the plain kernels have no such rule
    with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
        out = module(xt)
        (g,) = torch.autograd.grad(out, xt, torch.as_tensor(grad_out, device=device, dtype=out.dtype))
    return g.float().cpu().numpy()


class RemoteStage(torch.autograd.Function):
    """One stage service as a differentiable function: forward calls the stage, backward asks it
    for the VJP at the input it computed. `call(x)` and `call_vjp(x, g)` block (a worker thread)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, call, call_vjp) -> torch.Tensor:
        ctx.saved = (x.detach().numpy(), call_vjp)
        return torch.from_numpy(np.asarray(call(x.detach().numpy()), dtype=np.float32))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, call_vjp = ctx.saved
        return torch.from_numpy(np.asarray(call_vjp(x, grad.detach().numpy()), dtype=np.float32)), None, None


def stage_chain(calls: Sequence[tuple[Callable, Callable]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The stages in order as one differentiable forward (each a (call, call_vjp) pair)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        for call, call_vjp in calls:
            x = RemoteStage.apply(x, call, call_vjp)
        return x

    return forward
