"""ONNX / safetensors / TorchScript exports of every family (tiny presets, seeded fresh weights), with
the parity `foundry export` measures before publishing: the largest |runtime - torch| over a
batch of 5 and one of 1 (the exporter traced a batch of 2), the file size and the export's time.

    python bench/export_parity.py [FAMILY ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from modelfoundry import store
from modelfoundry.export_formats import FORMATS, export_format
from modelfoundry.models import REGISTRY, build_model
from modelfoundry.store.checkpoint import write_checkpoint


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mf-export-bench-"))
    print(f"{'family':12} {'format':12} {'max |diff|':>11} {'bytes':>9} {'seconds':>8}")
    for family in sys.argv[1:] or list(REGISTRY):
        torch.manual_seed(0)
        write_checkpoint(tmp / family, build_model(family, "tiny"), dataset={}, metrics={})
        store.export(str(tmp / family), str(tmp / "store"), family)
        for fmt in FORMATS:
            t0 = time.perf_counter()
            m = export_format(str(tmp / "store"), family, "latest", fmt)
            took = time.perf_counter() - t0
            print(f"{family:12} {fmt:12} {m['parity']['max_abs_diff']:11.2e} {m['bytes']:9,} {took:8.2f}", flush=True)


if __name__ == "__main__":
    main()
