"""`foundry export`: a model-store version in a format other runtimes load, written next to it.

    <store>/<name>/<version>/exports/<format>/model.<ext>
                                             /export.json   what it is and where it came from

Formats: `onnx` (torch's dynamo exporter, batch dimension dynamic; the sequence dimension too for
a language model), `safetensors` (the state_dict, with the family and config as metadata) and
`torchscript` (traced). Every export is checked before it is published: the ONNX file runs under
onnxruntime, the TorchScript module and the safetensors weights (loaded back into the family's
class) run under torch, on a batch of a size other than the one traced, and must match the
PyTorch model within PARITY_ATOL; export.json records the difference measured, the file's sha256
and the source version (name, version, the sha256 of its model.pt): its lineage. The export is
staged and moved into place only when complete; a second export of one format replaces the first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
from torch import nn

from modelfoundry.models import build_model
from modelfoundry.storage import filesystem, is_uri, join, upload_dir
from modelfoundry.store import CheckpointMeta, StoreVersion, resolve
from modelfoundry.store.checkpoint import load_checkpoint, sha256_file

PARITY_ATOL = 1e-4
EXPORTS_DIR = "exports"
MANIFEST = "export.json"
OPSET = 18
MISSING = "this format needs {}: pip install 'modelfoundry[export]'"


class _Forward(nn.Module):
    """The model's forward on one tensor (a language model's without its KV cache)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.eval()  # dropout off and the VAE's latent at its mean, as served

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _example(meta: CheckpointMeta, batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = meta.input_spec.shape
    if meta.input_spec.dtype == "int64":  # token ids: a shorter sequence than the context
        length = max(1, shape[0] // 2 + seed % 3)
        return torch.randint(0, meta.config["vocab_size"], (batch, length), generator=g)
    return torch.randn(batch, *shape, generator=g)


def _write_onnx(model: nn.Module, meta: CheckpointMeta, path: Path) -> None:
    dynamic = {0: torch.export.Dim("batch", max=4096)}
    if meta.input_spec.dtype == "int64":
        dynamic[1] = torch.export.Dim("sequence", max=meta.input_spec.shape[0])
    program = torch.onnx.export(
        _Forward(model),
        (_example(meta, 2, 0),),
        input_names=["input"],
        output_names=["output"],
        dynamic_shapes=({**dynamic},),
        opset_version=OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    program.save(str(path))


def _run_onnx(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError(MISSING.format("onnxruntime")) from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x.numpy()})[0]


def _write_safetensors(model: nn.Module, meta: CheckpointMeta, path: Path) -> None:
    try:
        from safetensors.torch import save_model
    except ImportError:
        raise ValueError(MISSING.format("safetensors")) from None
    save_model(model, str(path), metadata={"family": meta.family, "config": json.dumps(meta.config)})


def _run_safetensors(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    try:
        from safetensors import safe_open
        from safetensors.torch import load_model
    except ImportError:
        raise ValueError(MISSING.format("safetensors")) from None

    with safe_open(str(path), framework="pt") as f:
        info = f.metadata()
    model = build_model(info["family"], "default", **json.loads(info["config"]))
    load_model(model, str(path))
    model.eval()
    return lambda x: model(x).numpy()


def _write_torchscript(model: nn.Module, meta: CheckpointMeta, path: Path) -> None:
    traced = torch.jit.trace(_Forward(model), (_example(meta, 2, 0),), check_trace=False)
    torch.jit.save(traced, str(path))


def _run_torchscript(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    module = torch.jit.load(str(path), map_location="cpu")
    return lambda x: module(x).numpy()


@dataclass(frozen=True)
class Format:
    file: str
    write: Callable[[nn.Module, CheckpointMeta, Path], None]
    run: Callable[[Path], Callable[[torch.Tensor], np.ndarray]]  # a loaded export, as a function
    runtime: str  # the distribution that runs it (its version goes in export.json)


FORMATS = {
    "onnx": Format("model.onnx", _write_onnx, _run_onnx, "onnxruntime"),
    "safetensors": Format("model.safetensors", _write_safetensors, _run_safetensors, "safetensors"),
    "torchscript": Format("model.ts", _write_torchscript, _run_torchscript, "torch"),
}


def export_format(store: str, name: str, version: int | str, fmt: str) -> dict[str, Any]:
    """Write `name` at `version` in format `fmt` next to it in the store; returns export.json."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {sorted(FORMATS)}")
    spec = FORMATS[fmt]
    found = resolve(store, name, version)
    source = found.uri
    loaded = load_checkpoint(source, device="cpu")
    meta, model = loaded.meta, loaded.model
    if meta.quantization:
        parent = ((meta.compression or {}).get("parent") or {}).get("name", "the model it was compressed from")
        raise ValueError(
            f"{found} is quantized ({meta.codec}); its int8 "
            "kernels are PyTorch's own and do not export; export its float parent instead "
            f"({parent})"
        )
    with tempfile.TemporaryDirectory(prefix="mf-export-fmt-") as tmp:
        staged = Path(tmp) / fmt
        staged.mkdir()
        target = staged / spec.file
        try:
            with _quiet():
                spec.write(model, meta, target)
        except ImportError as err:  # torch's ONNX exporter imports onnx and onnxscript itself
            raise ValueError(MISSING.format(err.name)) from None
        except Exception as err:  # an exporter that cannot handle this model: say which and why
            raise RuntimeError(
                f"exporting {name} ({meta.family}) to {fmt} failed: {type(err).__name__}: {err}"
            ) from err
        diff = _parity(model, meta, spec.run(target))
        if diff > PARITY_ATOL:
            raise RuntimeError(
                f"the {fmt} export of {name} differs from the PyTorch model by {diff:.3g} (> {PARITY_ATOL}); not published"
            )
        manifest = _manifest(fmt, spec, target, found, meta, diff)
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2))
        manifest["path"] = _publish(staged, join(source, EXPORTS_DIR, fmt))
    return manifest


def _manifest(fmt: str, spec: Format, target: Path, found: StoreVersion, meta: CheckpointMeta, diff: float) -> dict:
    """export.json: the file, its sha256 and size, the version it came from, and the parity."""
    manifest = {
        "format": fmt,
        "file": spec.file,
        "sha256": sha256_file(target),
        "bytes": target.stat().st_size,
        "source": {
            "name": found.name,
            "version": found.version,
            "path": found.uri,
            "model_sha256": meta.sha256,
            "family": meta.family,
        },
        "input": {"name": "input", **meta.input_spec.model_dump(mode="json")},
        "output": "output",
        "parity": {
            "max_abs_diff": diff,
            "atol": PARITY_ATOL,
            "runtime": f"{spec.runtime} {metadata.version(spec.runtime)}",
        },
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if fmt == "onnx":
        manifest["opset"] = OPSET
    return manifest


@contextlib.contextmanager
def _quiet():
    """The exporters' warnings (tracer notes, torch.export deprecations, onnx's registry lines)
    say nothing a user of `foundry export` can act on: the parity check is what tells."""
    onnx_log = logging.getLogger("torch.onnx")
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        onnx_log.setLevel(level)


@torch.inference_mode()
def _parity(model: nn.Module, meta: CheckpointMeta, run: Callable[[torch.Tensor], np.ndarray]) -> float:
    """The largest absolute difference from the PyTorch model over two batches, one of a size
    other than the traced one (the batch dimension must really be dynamic)."""
    worst = 0.0
    for batch, seed in ((5, 1), (1, 2)):
        x = _example(meta, batch, seed)
        got = np.asarray(run(x))
        want = model(x).numpy()
        if got.shape != want.shape:
            raise RuntimeError(
                f"the export returns shape {list(got.shape)} for a batch of {batch}; PyTorch {list(want.shape)}"
            )
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def _publish(staged: Path, location: str) -> str:
    """Move the staged export into place: a rename on local disk (the old export, if any, is
    replaced only after the new one is complete); on a URI, replace then delete: the files are
    uploaded beside the old ones first, then each is moved over its old copy (every object is
    replaced whole), export.json last, and only then is anything the new export lacks deleted.
    A failed upload leaves the old export as it was."""
    if is_uri(location):
        fs, path = filesystem(location)
        incoming = f"{path}/.incoming-{uuid.uuid4().hex}"
        manifest = (staged / MANIFEST).read_bytes()
        (staged / MANIFEST).unlink()
        new = sorted(p.name for p in staged.iterdir())
        try:
            upload_dir(str(staged), join(location, Path(incoming).name))
            for name in new:
                fs.move(f"{incoming}/{name}", f"{path}/{name}")
            with fs.open_output_stream(f"{path}/{MANIFEST}") as f:
                f.write(manifest)
        finally:
            if fs.get_file_info(incoming).type != pafs.FileType.NotFound:
                fs.delete_dir(incoming)
        for info in fs.get_file_info(pafs.FileSelector(path)):
            if info.base_name in (*new, MANIFEST) or info.base_name.startswith(".incoming-"):
                continue
            if info.type == pafs.FileType.Directory:
                fs.delete_dir(info.path)
            else:
                fs.delete_file(info.path)
        return location
    dest = Path(location)
    dest.parent.mkdir(parents=True, exist_ok=True)
    incoming = dest.parent / f".incoming-{dest.name}-{time.time_ns()}"
    shutil.copytree(staged, incoming)
    old = dest.parent / f".old-{dest.name}-{time.time_ns()}"
    if dest.exists():
        dest.rename(old)
    incoming.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return str(dest)


def read_export(store: str, name: str, version: int | str, fmt: str) -> dict[str, Any]:
    """export.json of an existing export (ValueError when there is none)."""
    location = join(resolve(store, name, version).uri, EXPORTS_DIR, fmt, MANIFEST)
    fs, path = filesystem(location)
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise ValueError(f"{name}:{version} has no {fmt} export; run foundry export {name} --format {fmt}") from None
