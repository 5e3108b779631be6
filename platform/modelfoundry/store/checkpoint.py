"""The checkpoint format: the contract between training, the model store and serving.

A checkpoint is a directory holding
  model.pt     the model's state_dict only, loaded with torch.load(weights_only=True)
  model.json   family, hyperparameters, input spec, dataset, metrics, library versions, and the
               sha256 of model.pt (checked on every read: a mismatch is refused)
  state.pt     optional: optimizer state and epoch, for resuming training (not needed to serve)

A training checkpoint of an FSDP run (train.strategy: fsdp) holds, beside model.pt (the full
weights, gathered on rank 0 when the checkpoint is written), the model's and the optimizer's
shards as torch.distributed.checkpoint files under sharded/, each file's sha256 recorded in
model.json ("sharded"); state.pt keeps the epoch and history. The shards are for resuming the run
only (DCP's `.metadata` is a pickle: reading it runs code): serving, export and compression read
model.pt with weights_only and never open a shard. Every file name model.json lists must stay
inside the checkpoint directory (no absolute paths, no `..`, no symlink out of it).

A compressed model (compression/) is a checkpoint like any other: a pruned model or a distilled
student is a smaller model of its family (its own config); a quantized one records
"quantization": {"scheme": ...} in model.json and stores int8 weights as plain int8 tensors with
their scales (compression/quantize.py documents the layout). "compression" records the method,
its parameters, the parent (name, version, sha256) and the measures before and after.
"""

from __future__ import annotations

import hashlib
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
from torch import nn

from modelfoundry.models import build_model, config_dict, family_of, input_spec
from modelfoundry.storage import download_dir, filesystem, join
from modelfoundry.store.codecs import codec
from modelfoundry.store.meta import FORMAT_VERSION, META_FILE, CheckpointError, CheckpointMeta

MODEL_FILE, STATE_FILE = "model.pt", "state.pt"
SHARDED_MODEL_DIR, SHARDED_OPTIMIZER_DIR = "sharded/model", "sharded/optimizer"  # FSDP checkpoints
__all__ = ["CheckpointError", "CheckpointMeta", "META_FILE", "MODEL_FILE", "STATE_FILE"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import ray

    from modelfoundry import __version__

    return {
        "torch": torch.__version__,
        "ray": ray.__version__,
        "modelfoundry": __version__,
        "python": platform.python_version(),
    }


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP (or other) wrapper."""
    return model.module if hasattr(model, "module") else model


def write_checkpoint(
    directory: str | Path,
    model: nn.Module,
    *,
    dataset: dict[str, Any],
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
    train_state: dict[str, Any] | None = None,
    state: dict[str, torch.Tensor] | None = None,
    shards: dict[str, str] | None = None,
) -> Path:
    """Write model.pt (+ state.pt) and then model.json, which names model.pt's sha256.
    `state`: the tensors to store instead of the model's own (a quantized model's; the model then
    gives the family and config its structure is rebuilt from). `shards`: the model's weights are
    already written as sharded files (path -> sha256, training/sharding.py), for resuming; `state`
    then holds the full weights gathered from them (model.pt, what serving and export read)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    m = unwrap(model)
    if shards is not None and state is None:
        raise ValueError("a sharded checkpoint needs its full weights as state (sharding.full_state)")
    if state is None:
        state = {k: v.detach().cpu() for k, v in m.state_dict().items()}
    torch.save(state, d / MODEL_FILE)
    if train_state is not None:
        torch.save(train_state, d / STATE_FILE)
    meta = {
        "format_version": FORMAT_VERSION,
        "family": family_of(m),
        "config": config_dict(m),
        "input_spec": input_spec(m),
        "dataset": dataset,
        "metrics": metrics,
        "versions": library_versions(),
        "sha256": sha256_file(d / MODEL_FILE),
        **({"sharded": shards} if shards is not None else {}),
        **({"state_sha256": sha256_file(d / STATE_FILE)} if train_state is not None else {}),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    written = CheckpointMeta.model_validate(meta)  # what is written is what every reader parses
    (d / META_FILE).write_text(written.to_json())
    return d


def read_meta(location: str | Path) -> CheckpointMeta:
    """model.json of a checkpoint, a directory or a URI (s3://, gs://, file://), read alone (the
    weights beside it are not fetched, nor checked: that is `verify`'s, on a local copy)."""
    where = join(str(location), META_FILE)
    fs, path = filesystem(where)
    try:
        with fs.open_input_stream(path) as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{location} is not a checkpoint: {META_FILE} is missing") from None
    except OSError as err:
        raise CheckpointError(f"{where} cannot be read: {err}") from None
    return CheckpointMeta.parse(data, where)


def run_checkpoints(run_path: str) -> list[tuple[str, CheckpointMeta]]:
    """(location, model.json) of each checkpoint_* directory of a run, local or on a URI, whose
    model.json reads (not verified: that is `verify`'s, on a local copy)."""
    fs, root = filesystem(run_path)
    out = []
    for info in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        location = join(run_path, info.base_name)
        try:
            out.append((location, read_meta(location)))
        except CheckpointError:
            continue  # incomplete: model.json is written last
    return out


def checkpoint_epoch(location: str) -> int:
    """The epoch a training checkpoint (directory or URI) holds, from its model.json; 0 when it
    has none or cannot be read."""
    try:
        return int(read_meta(location).metrics["epoch"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return 0


def inside(directory: Path, name: object) -> Path:
    """`directory / name` for a file name model.json gives, refused unless it is a relative path
    that stays inside `directory` (no absolute path, no `..`, no symlink pointing out of it)."""
    from pathlib import PurePosixPath

    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise CheckpointError(f"{directory / META_FILE}: file name {name!r} is not a relative path")
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts:
        raise CheckpointError(f"{directory / META_FILE}: file name {name!r} points outside the checkpoint")
    path = directory / rel
    root = directory.resolve()
    if path.exists() or path.is_symlink():
        real = path.resolve()
        if real != root and root not in real.parents:
            raise CheckpointError(f"{directory / META_FILE}: {name!r} is a link out of the checkpoint")
    return path


def verify(directory: str | Path) -> CheckpointMeta:
    """model.json's metadata, after checking model.pt (and, in a training checkpoint, state.pt and
    an FSDP run's shards) against the sha256 model.json records: a truncated, corrupt or missing
    file is refused, and so is a file name that leads out of the checkpoint."""
    d = Path(directory)
    meta = read_meta(d)
    files: list[tuple[str, str | None]] = [(STATE_FILE, meta.state_sha256)]  # training checkpoints only
    if meta.sharded is not None:
        if not meta.sharded:
            raise CheckpointError(f"{d / META_FILE}: 'sharded' must map the shard files to their sha256")
        if meta.sha256 is None:  # written before model.pt was gathered at save time
            raise CheckpointError(
                f"{d} is a sharded (FSDP) checkpoint without a consolidated {MODEL_FILE}: its weights could "
                "only be read through DCP's pickled .metadata, which runs code on load, so it is refused. "
                "Resume the run with this version of modelfoundry (train --resume) to write a checkpoint "
                f"that carries {MODEL_FILE}"
            )
        files += list(meta.sharded.items())
    if not inside(d, MODEL_FILE).is_file():
        raise CheckpointError(f"{d} is not a checkpoint: {MODEL_FILE} is missing")
    files.append((MODEL_FILE, meta.sha256))
    for name, expected in files:
        if expected is None:
            continue
        path = inside(d, name)
        if not path.is_file():
            raise CheckpointError(f"{d} is not a complete checkpoint: {name} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointError(
                f"checkpoint {d} failed its integrity check: {name} has sha256 {actual[:16]}..., "
                f"model.json records {expected[:16]}... (corrupt, truncated or tampered; refusing to load it)"
            )
    return meta


@dataclass
class LoadedModel:
    model: nn.Module
    meta: CheckpointMeta
    path: str
    device: str = "cpu"


def load_checkpoint(location: str | Path, device: str = "cpu") -> LoadedModel:
    """Verify and load a checkpoint from a directory or URI into an eval-mode model. device
    "auto": a GPU when there is one, unless the model's kernels exist on the CPU only (int8)."""
    with tempfile.TemporaryDirectory(prefix="mf-ckpt-") as tmp:
        local = Path(download_dir(str(location), tmp))
        meta = verify(local)
        weights = local / MODEL_FILE  # an FSDP checkpoint's too: its shards are for resuming only
        model = build_model(meta.family, "default", **meta.config)
        weight_codec = codec(meta.codec)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() and not weight_codec.cpu_only else "cpu"
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model = weight_codec.load(model, state, device)
        except Exception as err:  # unpickling refused or shapes differ: the file is not ours
            raise CheckpointError(f"cannot load weights from {weights}: {err}") from None
    return LoadedModel(model.to(device).eval(), meta, str(location), device)


def load_train_state(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
