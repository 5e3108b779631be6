"""The quantized weight codecs (compression/quantize.py's schemes) as the model store reads them:
registered through the entry-point group `modelfoundry.weight_codecs` in pyproject.toml, so the
store loads an int8 checkpoint without importing compression/ (store/codecs.py)."""

from __future__ import annotations

from functools import partial

from modelfoundry.compression.quantize import CPU_ONLY, SCHEMES, load_quantized
from modelfoundry.store.codecs import WeightCodec


def _load(scheme: str, model, state, device: str):
    return load_quantized(model, scheme, state, device)


CODECS = [WeightCodec(s, partial(_load, s), cpu_only=s in CPU_ONLY) for s in SCHEMES]
