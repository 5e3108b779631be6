"""Which int8 runtime for the dynamic path: an fp32 MLP (784-256-128-10) against torch.ao's
dynamic int8 (fbgemm/x86, what compression/quantize.py uses) and a plain `torch._int_mm` int8
matmul with per-row activation scales, at batch 1 and 64, one torch thread, interleaved rounds.

    python bench/int8_matmul.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn

from machine import finish, quiet_start  # bench/machine.py (the script's folder is on sys.path)


class IntMMLinear(nn.Module):
    """int8 weights (per-row scale) x int8 activations (per-row scale) through torch._int_mm."""

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        from modelfoundry.compression.quantize import quantize_rows

        q, s = quantize_rows(lin.weight)
        self.register_buffer("w", q.t().contiguous())
        self.register_buffer("s", s)
        self.register_buffer("b", lin.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.abs().amax(1, keepdim=True).clamp_min(1e-8) / 127
        xq = torch.round(x / xs).to(torch.int8)
        return torch._int_mm(xq, self.w).float() * xs * self.s + self.b


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    from modelfoundry.compression.measure import latencies_ms
    from modelfoundry.compression.quantize import _dynamic_convert

    start = quiet_start()
    torch.manual_seed(0)
    fp32 = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    intmm = nn.Sequential(*[IntMMLinear(m) if isinstance(m, nn.Linear) else m for m in fp32]).eval()
    import copy

    ao = _dynamic_convert(copy.deepcopy(fp32))
    models = {"fp32": fp32, "torch.ao dynamic int8": ao, "torch._int_mm": intmm}
    out = {b: latencies_ms(models, (784,), b, args.rounds) for b in (1, 64)}
    result = {"p50_ms": out, "machine": finish(start)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
